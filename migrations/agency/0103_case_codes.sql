-- A case code (解纷码) names one case of the agency that sent it: a second referral under the
-- same code would make the first unfindable by code. Cases received from others are not
-- constrained (two referrers may use the same code).
CREATE UNIQUE INDEX cases_sent_case_code ON cases (owner_kind, owner_code, case_code)
    WHERE referrer_kind = owner_kind AND referrer_code = owner_code;
