//! The one piece of DER writing both backends need: a tag and a definite length around content, for the
//! SPKI and signature encodings that the libraries below do not write themselves.

/// `tag`, the DER definite length of `content` (short form below 128 bytes, long form above), then `content`.
pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let significant = bytes.iter().skip_while(|b| **b == 0);
        out.push(0x80 | significant.clone().count() as u8);
        out.extend(significant);
    }
    out.extend_from_slice(content);
    out
}

#[cfg(test)]
mod tests {
    use super::tlv;

    #[test]
    fn lengths_use_the_shortest_definite_form() {
        assert_eq!(tlv(0x04, &[1, 2]), [0x04, 2, 1, 2]);
        assert_eq!(tlv(0x04, &[0; 0x7f])[..2], [0x04, 0x7f]);
        assert_eq!(tlv(0x04, &[0; 0x80])[..3], [0x04, 0x81, 0x80]);
        assert_eq!(tlv(0x03, &[0; 1185])[..4], [0x03, 0x82, 0x04, 0xa1]);
    }
}
