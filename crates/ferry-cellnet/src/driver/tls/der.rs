//! What ferry reads of a certificate itself, from its DER: the subject CN (a peer's name) and
//! the X.509 version (v1 certificates are refused with a hint). A minimal, bounds-checked
//! walk: rustls has verified the certificate before the CN is read.

use rustls::pki_types::CertificateDer;

/// Minimal DER reader: one TLV at the start of `b` → (tag, content, rest).
pub(super) fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *b.first()?;
    let l0 = *b.get(1)? as usize;
    let (len, hdr) = if l0 < 0x80 {
        (l0, 2)
    } else {
        let n = l0 & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *b.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let end = hdr.checked_add(len)?;
    if end > b.len() {
        return None;
    }
    Some((tag, &b[hdr..end], &b[end..]))
}

/// The X.509 version of a DER certificate (1, 2 or 3), `None` if it is not one. v1 has no
/// `[0]` version field in its TBSCertificate.
pub(super) fn cert_version(cert: &CertificateDer<'_>) -> Option<u8> {
    const SEQ: u8 = 0x30;
    let (tag, cert, _) = tlv(cert.as_ref())?;
    if tag != SEQ {
        return None;
    }
    let (tag, tbs, _) = tlv(cert)?;
    if tag != SEQ {
        return None;
    }
    let (tag, version, _) = tlv(tbs)?;
    if tag != 0xa0 {
        return Some(1);
    }
    match tlv(version)? {
        (0x02, [v], _) if *v <= 2 => Some(v + 1),
        _ => None,
    }
}

/// The subject common name (OID 2.5.4.3) of a DER certificate. The certificate has already
/// been verified against the CA by rustls; this only walks its structure, bounds-checked.
pub fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    const SEQ: u8 = 0x30;
    let (tag, cert, _) = tlv(cert.as_ref())?;
    if tag != SEQ {
        return None;
    }
    let (tag, tbs, _) = tlv(cert)?;
    if tag != SEQ {
        return None;
    }
    let mut rest = tbs;
    // optional [0] version
    let (tag, _, r) = tlv(rest)?;
    if tag == 0xa0 {
        rest = r;
    }
    // serial, signature algorithm, issuer, validity, subject
    let mut fields = Vec::with_capacity(5);
    for _ in 0..5 {
        let (tag, content, r) = tlv(rest)?;
        fields.push((tag, content));
        rest = r;
    }
    let (tag, subject) = fields[4];
    if tag != SEQ {
        return None;
    }
    let mut rdns = subject;
    while !rdns.is_empty() {
        let (_set_tag, set, r) = tlv(rdns)?;
        rdns = r;
        let mut atvs = set;
        while !atvs.is_empty() {
            let (_, atv, r) = tlv(atvs)?;
            atvs = r;
            let (oid_tag, oid, val) = tlv(atv)?;
            if oid_tag == 0x06 && oid == [0x55, 0x04, 0x03] {
                let (vtag, v, _) = tlv(val)?;
                return match vtag {
                    // UTF8String, PrintableString, IA5String, T61String
                    0x0c | 0x13 | 0x16 | 0x14 => String::from_utf8(v.to_vec()).ok(),
                    // BMPString (UTF-16BE)
                    0x1e if v.len() % 2 == 0 => {
                        let units: Vec<u16> = v
                            .chunks_exact(2)
                            .map(|c| u16::from_be_bytes([c[0], c[1]]))
                            .collect();
                        String::from_utf16(&units).ok()
                    }
                    _ => None,
                };
            }
        }
    }
    None
}
