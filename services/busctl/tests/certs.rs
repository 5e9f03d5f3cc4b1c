//! `duijie-bus certs`: the CA is made once and kept with its key; an agency added later gets a
//! certificate from the same CA, and certificates already handed out are never reissued.

use std::path::Path;
use std::process::Command;

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, UnixTime};

fn certs(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_duijie-bus"))
        .arg("certs")
        .arg("--dir")
        .arg(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running duijie-bus: {e}"))
}

fn read(dir: &Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Whether `cert` (PEM) chains to `ca` (PEM) as a client certificate, checked by webpki.
fn chains(ca: &[u8], cert: &[u8]) -> Result<(), String> {
    let ca = CertificateDer::from_pem_slice(ca).map_err(|e| e.to_string())?;
    let ee = CertificateDer::from_pem_slice(cert).map_err(|e| e.to_string())?;
    let anchor = webpki::anchor_from_trusted_cert(&ca).map_err(|e| e.to_string())?;
    let ee = webpki::EndEntityCert::try_from(&ee).map_err(|e| e.to_string())?;
    ee.verify_for_usage(webpki::ALL_VERIFICATION_ALGS, &[anchor], &[], UnixTime::now(), webpki::KeyUsage::client_auth(), None, None)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[test]
fn an_agency_added_later_gets_a_certificate_from_the_same_ca_and_nothing_is_reissued() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dir = tmp.path().join("pki");

    let first = certs(&dir, &["court:431003"]);
    assert!(first.status.success(), "{first:?}");
    let (ca, court) = (read(&dir, "ca.pem"), read(&dir, "court-431003.pem"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.join("ca-key.pem")).map(|m| m.permissions().mode() & 0o777).unwrap_or(0);
        assert_eq!(mode, 0o600, "the CA key is readable by its owner only");
    }
    assert_eq!(chains(&ca, &court), Ok(()));

    // A new region's centre and its service, later: issued by the same CA; the court's kept.
    let second = certs(&dir, &["court:431003", "mediation:431004", "--service", "mediation"]);
    assert!(second.status.success(), "{second:?}");
    let out = String::from_utf8_lossy(&second.stdout);
    assert!(out.contains("kept") && out.contains("issued"), "{out}");
    assert_eq!(read(&dir, "ca.pem"), ca, "the CA is not made again");
    assert_eq!(read(&dir, "court-431003.pem"), court, "a certificate handed out is not reissued");
    assert_eq!(chains(&ca, &read(&dir, "mediation-431004.pem")), Ok(()));
    assert_eq!(chains(&ca, &read(&dir, "service-mediation.pem")), Ok(()));

    // A CA from an older duijie-bus (no key kept): what is there is fine, more cannot be issued.
    std::fs::remove_file(dir.join("ca-key.pem")).unwrap_or_else(|e| panic!("{e}"));
    let nothing_new = certs(&dir, &["court:431003"]);
    assert!(nothing_new.status.success(), "{nothing_new:?}");
    let refused = certs(&dir, &["police:431003"]);
    assert!(!refused.status.success(), "{refused:?}");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("not its key") && err.contains("police:431003"), "{err}");
    assert!(!dir.join("police-431003.pem").exists());

    // Garbage is refused.
    let bad = certs(&dir, &["nonsense"]);
    assert!(!bad.status.success(), "{bad:?}");
}
