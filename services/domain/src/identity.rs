//! Identity numbers of parties: validation (with the field at fault named for the caller) and
//! masking for agencies that do not need the full number.

use duijie_proto::v1::IdDocumentType;

/// Why an identity number was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// Wrong length or characters for the document type.
    #[error("{0} has the wrong format")]
    Format(&'static str),
    /// The birth date inside a resident identity number is not a real date.
    #[error("resident identity number has an impossible birth date")]
    BirthDate,
    /// The check character does not match (a typing error).
    #[error("{0} check digit does not match")]
    Checksum(&'static str),
    /// No document type given.
    #[error("identity document type is not set")]
    MissingType,
    /// No number given.
    #[error("identity number is empty")]
    Empty,
}

/// Validates `number` for its document type. Resident identity numbers (GB 11643-1999) and
/// unified social credit codes (GB 32100-2015) are checked down to their check character;
/// other documents only for plausible length and characters.
pub fn validate(doc_type: IdDocumentType, number: &str) -> Result<(), IdentityError> {
    if number.is_empty() {
        return Err(IdentityError::Empty);
    }
    match doc_type {
        IdDocumentType::Unspecified => Err(IdentityError::MissingType),
        IdDocumentType::ResidentIdCard => validate_resident_id(number),
        IdDocumentType::SocialCreditCode => validate_social_credit_code(number),
        IdDocumentType::Passport
        | IdDocumentType::HkMacaoPermit
        | IdDocumentType::TaiwanPermit
        | IdDocumentType::ForeignPermanentResident
        | IdDocumentType::Other => {
            if (5..=20).contains(&number.len()) && number.chars().all(|c| c.is_ascii_alphanumeric()) {
                Ok(())
            } else {
                Err(IdentityError::Format("document number"))
            }
        }
    }
}

/// GB 11643-1999: 17 digits (6 area, 8 birth date, 3 sequence) and a check character computed
/// with weights 2^(17-i) mod 11, mapped through `10X98765432`.
pub fn validate_resident_id(number: &str) -> Result<(), IdentityError> {
    const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    const CHECK: [u8; 11] = *b"10X98765432";
    let bytes = number.as_bytes();
    if bytes.len() != 18 || !bytes[..17].iter().all(u8::is_ascii_digit) {
        return Err(IdentityError::Format("resident identity number"));
    }
    let birth = &number[6..14];
    if chrono::NaiveDate::parse_from_str(birth, "%Y%m%d").is_err() {
        return Err(IdentityError::BirthDate);
    }
    let sum: u32 = bytes[..17].iter().zip(WEIGHTS).map(|(d, w)| u32::from(d - b'0') * w).sum();
    let expected = CHECK[(sum % 11) as usize];
    if bytes[17].to_ascii_uppercase() == expected {
        Ok(())
    } else {
        Err(IdentityError::Checksum("resident identity number"))
    }
}

/// GB 32100-2015: 18 characters from `0-9A-Z` without I, O, Z, S, V; the last is a check
/// character with weights 3^i mod 31.
pub fn validate_social_credit_code(code: &str) -> Result<(), IdentityError> {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHJKLMNPQRTUWXY";
    const WEIGHTS: [u32; 17] = [1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28];
    let bytes = code.as_bytes();
    if bytes.len() != 18 {
        return Err(IdentityError::Format("unified social credit code"));
    }
    let value = |c: u8| ALPHABET.iter().position(|&a| a == c.to_ascii_uppercase()).map(|p| p as u32);
    let mut sum = 0;
    for (c, w) in bytes[..17].iter().zip(WEIGHTS) {
        sum += value(*c).ok_or(IdentityError::Format("unified social credit code"))? * w;
    }
    let check = (31 - sum % 31) % 31;
    match value(bytes[17]) {
        Some(v) if v == check => Ok(()),
        Some(_) => Err(IdentityError::Checksum("unified social credit code")),
        None => Err(IdentityError::Format("unified social credit code")),
    }
}

/// The number as shown to an agency that does not need it: the first 4 and last 4 characters
/// (the first 2 and last 2 for short numbers), the rest as `*`.
pub fn mask(number: &str) -> String {
    let chars: Vec<char> = number.chars().collect();
    let keep = if chars.len() >= 12 { 4 } else if chars.len() >= 6 { 2 } else { 0 };
    chars
        .iter()
        .enumerate()
        .map(|(i, c)| if i < keep || i + keep >= chars.len() { *c } else { '*' })
        .collect()
}

/// A message as a timeline shows it to any reader of the case (the holder, the referrer, a body
/// that handed the case on, the audit store's participants and supervisors): in a referral, and
/// in the revised referral an amendment carries, the parties' identity numbers masked and their
/// contacts and addresses left out (the holder reads those in its own view of the case), and the
/// history a handed-on case carries left out (each of its messages has its own entry).
pub fn shown(mut env: duijie_proto::v1::Envelope) -> duijie_proto::v1::Envelope {
    use duijie_proto::v1::envelope::Payload;
    use duijie_proto::v1::Referral;
    fn for_timeline(r: Referral) -> Referral {
        let mut r = masked(r);
        for p in &mut r.parties {
            p.contact.clear();
            p.address.clear();
            // Ciphertext a timeline reader cannot open (README, Party data).
            p.sealed.clear();
        }
        if let Some(f) = &mut r.forwarded {
            f.history.clear();
        }
        r
    }
    env.payload = match env.payload.take() {
        Some(Payload::Referral(r)) => Some(Payload::Referral(for_timeline(r))),
        Some(Payload::Amendment(mut a)) => {
            a.revised = a.revised.map(for_timeline);
            Some(Payload::Amendment(a))
        }
        other => other,
    };
    env
}

/// `referral` as shown to an agency that does not need the parties' identity numbers.
pub fn masked(mut referral: duijie_proto::v1::Referral) -> duijie_proto::v1::Referral {
    for p in &mut referral.parties {
        if let Some(id) = &mut p.identity {
            id.number = mask(&id.number);
        }
    }
    referral
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_ids() {
        // The GB 11643-1999 standard's own example, and one ending in X.
        assert_eq!(validate_resident_id("11010519491231002X"), Ok(()));
        assert_eq!(validate_resident_id("11010519491231002x"), Ok(()));
        assert_eq!(validate_resident_id("440524188001010014"), Ok(()));
        assert_eq!(validate_resident_id("110105194912310021"), Err(IdentityError::Checksum("resident identity number")));
        assert_eq!(validate_resident_id("110105194902300026"), Err(IdentityError::BirthDate));
        assert_eq!(validate_resident_id("1101051949123100"), Err(IdentityError::Format("resident identity number")));
        assert_eq!(validate_resident_id("11010519491231002Y"), Err(IdentityError::Checksum("resident identity number")));
        assert_eq!(validate(IdDocumentType::Unspecified, "x"), Err(IdentityError::MissingType));
        assert_eq!(validate(IdDocumentType::ResidentIdCard, ""), Err(IdentityError::Empty));
    }

    #[test]
    fn social_credit_codes() {
        assert_eq!(validate_social_credit_code("91350100M000100Y43"), Ok(()));
        assert_eq!(validate_social_credit_code("91350100M000100Y44"), Err(IdentityError::Checksum("unified social credit code")));
        assert_eq!(validate_social_credit_code("91350100M000100YI3"), Err(IdentityError::Format("unified social credit code")));
    }

    #[test]
    fn masking() {
        assert_eq!(mask("11010519491231002X"), "1101**********002X");
        assert_eq!(mask("E1234567"), "E1****67");
        assert_eq!(mask("1234"), "****");
    }

    #[test]
    fn a_shown_message_keeps_its_payload_and_hides_what_only_the_holder_needs() {
        use duijie_proto::v1::envelope::Payload;
        use duijie_proto::v1::{Amendment, Envelope, ForwardedCase, IdentityDocument, Party, Receipt, Referral};
        let receipt = Envelope { payload: Some(Payload::Receipt(Receipt { signed_by: "王明".into(), ..Default::default() })), ..Default::default() };
        assert_eq!(shown(receipt.clone()), receipt, "nothing to mask: the message as it is");
        let party = Party {
            name: "张三".into(),
            identity: Some(IdentityDocument { number: "11010519491231002X".into(), ..Default::default() }),
            contact: "13800000000".into(),
            address: "苏仙区白露塘镇".into(),
            ..Default::default()
        };
        let forwarded = ForwardedCase { history: vec![vec![1, 2, 3]], ..Default::default() };
        let referral = Referral { parties: vec![party], forwarded: Some(forwarded), ..Default::default() };
        let Some(Payload::Referral(r)) = shown(Envelope { payload: Some(Payload::Referral(referral.clone())), ..Default::default() }).payload else {
            panic!("the referral is kept");
        };
        let hidden = |r: &Referral| {
            let p = &r.parties[0];
            p.name == "张三" && p.identity.as_ref().is_some_and(|i| i.number == "1101**********002X") && p.contact.is_empty() && p.address.is_empty()
        };
        assert!(hidden(&r), "identity masked, contact and address left out: {r:?}");
        assert!(r.forwarded.is_some_and(|f| f.history.is_empty()), "history left out");
        // An amendment carries a whole revised referral: shown the same way.
        let amendment = Payload::Amendment(Amendment { revised: Some(referral), reason: "补正".into(), ..Default::default() });
        let Some(Payload::Amendment(a)) = shown(Envelope { payload: Some(amendment), ..Default::default() }).payload else {
            panic!("the amendment is kept");
        };
        assert!(a.revised.as_ref().is_some_and(hidden), "{a:?}");
        assert_eq!(a.reason, "补正");
    }
}
