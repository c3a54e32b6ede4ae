//! Digests and base64: `ngx.md5`, `ngx.md5_bin`, `ngx.sha1_bin`, `ngx.hmac_sha1`,
//! `ngx.crc32_short`/`ngx.crc32_long`, `ngx.encode_base64` and `ngx.decode_base64`.

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use hmac::{Hmac, KeyInit, Mac};
use md5::{Digest, Md5};
use sha1::Sha1;

/// `ngx.md5`: the MD5 digest in lower-case hex.
pub(super) fn md5_hex(input: &[u8]) -> Vec<u8> {
    Md5::digest(input)
        .iter()
        .flat_map(|&byte| super::hex_pair(byte, b"0123456789abcdef"))
        .collect()
}

/// `ngx.md5_bin`.
pub(super) fn md5_bin(input: &[u8]) -> Vec<u8> {
    Md5::digest(input).to_vec()
}

/// `ngx.sha1_bin`.
pub(super) fn sha1_bin(input: &[u8]) -> Vec<u8> {
    Sha1::digest(input).to_vec()
}

/// `ngx.crc32_short` and `ngx.crc32_long`: nginx's crc32_short only uses a smaller table; both
/// compute the same CRC-32.
pub(super) fn crc32(input: &[u8]) -> u32 {
    crc32fast::hash(input)
}

/// `ngx.hmac_sha1(key, message)`, binary.
pub(super) fn hmac_sha1(key: &[u8], message: &[u8]) -> mlua::Result<Vec<u8>> {
    let mut mac = Hmac::<Sha1>::new_from_slice(key).map_err(mlua::Error::external)?;
    mac.update(message);
    Ok(mac.finalize().into_bytes().to_vec())
}

/// Standard base64, padded unless `no_padding` (`ngx.encode_base64`).
pub(super) fn encode_base64(input: &[u8], no_padding: bool) -> String {
    if no_padding {
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(input)
    } else {
        base64::engine::general_purpose::STANDARD.encode(input)
    }
}

/// Decodes standard base64 as nginx's `ngx_decode_base64`: input ends at the first `=`, padding is
/// optional and unused trailing bits are ignored; any other byte outside the alphabet fails.
pub fn decode_base64(input: &[u8]) -> Option<Vec<u8>> {
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(DecodePaddingMode::RequireNone),
    );
    let end = input.iter().position(|&byte| byte == b'=').unwrap_or(input.len());
    let data = &input[..end];
    // The crate rejects these too, but checking first keeps "nil on bad input" independent of its
    // error variants.
    if data.len() % 4 == 1
        || !data
            .iter()
            .all(|&byte| byte.is_ascii_alphanumeric() || byte == b'+' || byte == b'/')
    {
        return None;
    }
    LENIENT.decode(data).ok()
}
