//! Legal time limits: when a period that starts at an event ends.
//!
//! The rules are those of the Civil Code (民法典) on periods: the day of the event is not
//! counted (第201条); a period in months ends on the corresponding day of the last month, or
//! its last day if there is none (第202条); if the last day is a statutory rest day the period
//! ends on the first working day after it (第203条); the period ends at 24:00 of the last day.
//! Days are China Standard Time (UTC+8). Working-day periods (治安调解) count only working days,
//! which needs the State Council's yearly holiday arrangement (放假安排, with its adjusted
//! working days 调休): a [`WorkCalendar`] holds it.

use std::collections::BTreeSet;

use chrono::{DateTime, Datelike, Days, FixedOffset, Months, NaiveDate, Offset as _, TimeZone, Utc, Weekday};

/// China Standard Time.
pub fn china() -> FixedOffset {
    // 8 hours east is within ±24 h, so this always exists.
    FixedOffset::east_opt(8 * 3600).unwrap_or_else(|| FixedOffset::east_opt(0).unwrap_or(Utc.fix()))
}

/// A period as the law states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// Calendar days (日).
    Days(u32),
    /// Working days (工作日).
    WorkingDays(u32),
    /// Months (月).
    Months(u32),
}

/// Rest days and adjusted working days.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkCalendar {
    holidays: BTreeSet<NaiveDate>,
    workdays: BTreeSet<NaiveDate>,
}

/// A line of a holiday file that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("holiday calendar line {line}: {reason}")]
pub struct CalendarError {
    pub line: usize,
    pub reason: String,
}

impl WorkCalendar {
    /// Saturdays and Sundays only, no public holidays.
    pub fn weekends_only() -> Self {
        Self::default()
    }

    /// The calendar shipped with duijie (`calendar/cn-holidays.txt`).
    pub fn bundled() -> Self {
        // The bundled file is tested to parse (see the tests below).
        Self::parse(include_str!("../calendar/cn-holidays.txt")).unwrap_or_default()
    }

    /// Reads lines `YYYY-MM-DD holiday` or `YYYY-MM-DD workday` (`#` starts a comment).
    pub fn parse(text: &str) -> Result<Self, CalendarError> {
        let mut cal = Self::default();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let err = |reason: &str| CalendarError { line: i + 1, reason: reason.to_owned() };
            let mut parts = line.split_whitespace();
            let (Some(date), Some(kind), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(err("expected `YYYY-MM-DD holiday|workday`"));
            };
            let date = NaiveDate::parse_from_str(date, "%Y-%m-%d").map_err(|_| err("bad date"))?;
            match kind {
                "holiday" => cal.holidays.insert(date),
                "workday" => cal.workdays.insert(date),
                _ => return Err(err("kind must be holiday or workday")),
            };
        }
        Ok(cal)
    }

    /// Whether `d` is a working day: an adjusted working day, or a weekday that is no holiday.
    pub fn is_working_day(&self, d: NaiveDate) -> bool {
        if self.workdays.contains(&d) {
            return true;
        }
        !matches!(d.weekday(), Weekday::Sat | Weekday::Sun) && !self.holidays.contains(&d)
    }

    /// The years the calendar has holiday data for (a working-day period outside them is
    /// computed with weekends only, and callers may want to warn).
    pub fn years(&self) -> BTreeSet<i32> {
        self.holidays.iter().map(Datelike::year).collect()
    }

    /// When a period that started at `start` ends (24:00 China time of its last day).
    pub fn due(&self, start: DateTime<Utc>, period: Period) -> DateTime<Utc> {
        let day0 = start.with_timezone(&china()).date_naive();
        let mut last = match period {
            Period::Days(n) => day0.checked_add_days(Days::new(u64::from(n))).unwrap_or(day0),
            Period::Months(n) => day0.checked_add_months(Months::new(n)).unwrap_or(day0),
            Period::WorkingDays(n) => {
                let mut d = day0;
                let mut counted = 0;
                while counted < n {
                    d = d.succ_opt().unwrap_or(d);
                    if self.is_working_day(d) {
                        counted += 1;
                    }
                }
                d
            }
        };
        // 第203条: a period ending on a rest day runs to the next working day.
        while !self.is_working_day(last) {
            last = last.succ_opt().unwrap_or(last);
        }
        let end = last.succ_opt().unwrap_or(last).and_hms_opt(0, 0, 0).unwrap_or_default();
        china().from_local_datetime(&end).single().map(|d| d.with_timezone(&Utc)).unwrap_or(start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).map(|d| d.with_timezone(&Utc)).unwrap_or_default()
    }

    #[test]
    fn calendar_days_exclude_the_first_day_and_end_at_midnight_china_time() {
        let cal = WorkCalendar::weekends_only();
        // Signed for on Monday 2025-03-03 10:00 CST: 15 days → Tuesday 03-18, ends 24:00 CST.
        assert_eq!(cal.due(at("2025-03-03T10:00:00+08:00"), Period::Days(15)), at("2025-03-19T00:00:00+08:00"));
        // 23:30 UTC on 03-02 is already 03-03 in China.
        assert_eq!(cal.due(at("2025-03-02T23:30:00Z"), Period::Days(15)), at("2025-03-19T00:00:00+08:00"));
        // Ending on a Saturday runs to Monday.
        assert_eq!(cal.due(at("2025-03-03T10:00:00+08:00"), Period::Days(12)), at("2025-03-18T00:00:00+08:00"));
    }

    #[test]
    fn months_end_on_the_corresponding_day_or_the_month_end() {
        let cal = WorkCalendar::weekends_only();
        assert_eq!(cal.due(at("2025-01-31T09:00:00+08:00"), Period::Months(1)), at("2025-03-01T00:00:00+08:00")); // Fri 02-28
        assert_eq!(cal.due(at("2025-04-15T09:00:00+08:00"), Period::Months(1)), at("2025-05-16T00:00:00+08:00")); // Thu 05-15
    }

    #[test]
    fn working_days_skip_weekends_holidays_and_count_adjusted_workdays() {
        let cal = WorkCalendar::bundled();
        assert!(cal.years().contains(&2025));
        // Accepted Thursday 2025-09-25: 3 working days = Fri 26, Sun 28 (调休 workday), Mon 29.
        assert_eq!(cal.due(at("2025-09-25T15:00:00+08:00"), Period::WorkingDays(3)), at("2025-09-30T00:00:00+08:00"));
        // Accepted Tuesday 2025-09-30: National Day holidays 10-01..10-08, Thu 10-09, Fri 10-10, Sat 10-11 (调休).
        assert_eq!(cal.due(at("2025-09-30T15:00:00+08:00"), Period::WorkingDays(3)), at("2025-10-12T00:00:00+08:00"));
        // A calendar-day period ending inside the holiday runs to the first working day after it.
        assert_eq!(cal.due(at("2025-09-26T10:00:00+08:00"), Period::Days(7)), at("2025-10-10T00:00:00+08:00"));
    }

    #[test]
    fn the_2026_arrangement_is_bundled() {
        let cal = WorkCalendar::bundled();
        assert!(cal.years().contains(&2026));
        // Accepted Wednesday 2026-09-30: holidays 10-01..10-07, Thu 10-08, Fri 10-09, Sat 10-10 (调休).
        assert_eq!(cal.due(at("2026-09-30T15:00:00+08:00"), Period::WorkingDays(3)), at("2026-10-11T00:00:00+08:00"));
        // Spring Festival: Sat 02-14 is a working day, 02-15..02-23 are not.
        assert_eq!(cal.due(at("2026-02-13T09:00:00+08:00"), Period::WorkingDays(2)), at("2026-02-25T00:00:00+08:00"));
    }

    #[test]
    fn bad_calendar_lines_are_reported_with_their_number() {
        assert_eq!(WorkCalendar::parse("2025-01-01 holiday\n2025-13-01 holiday").map(|_| ()).map_err(|e| e.line), Err(2));
        assert!(WorkCalendar::parse("2025-01-01 party").is_err());
        assert!(WorkCalendar::parse("# only a comment\n\n").is_ok());
    }
}
