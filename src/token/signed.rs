//! The signed codec: a keyed MAC over the whole token, with the endpoint's key encrypted.

use std::fmt;

use aes_siv::aead::KeyInit;
use aes_siv::siv::Aes128Siv;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hkdf::Hkdf;
use sha2::Sha256;

use super::{Binding, Claims, Codec, MIN_KEY_LEN};
use crate::policy::PolicyError;

const VERSION: u8 = 1;
/// Version byte, issue time and refresh time (both `u32` seconds).
const HEADER_LEN: usize = 9;
const TAG_LEN: usize = 16;
/// The domain label mixed into every token: a token of another codec or version never verifies.
const LABEL: &[u8] = b"tower-session-persistence/signed/v1";
/// Work per request stays bounded whatever a client sends.
const MAX_TOKEN_LEN: usize = 1024;

/// Signed tokens: tamper-evident, replica-safe, and opaque about the endpoint.
///
/// A token is `base64url(version ‖ issued ‖ refreshed ‖ tag ‖ ciphertext)`. It is sealed with
/// AES-SIV (RFC 5297, the `aes-siv` crate): the tag is a keyed MAC (CMAC) over the version, the
/// times, the session name and scope, and the endpoint's key; the key itself is encrypted, so a
/// token never shows an address. The times are authenticated but readable, and AES-SIV is
/// deterministic: two sessions on the same endpoint issued in the same second carry the same
/// token. [`SealedCodec`](super::SealedCodec) hides all of that.
///
/// Key rotation: the first key signs, every key verifies. Each key is at least 32 bytes and is
/// stretched with HKDF-SHA256.
///
/// ```
/// use tower_session_persistence::token::{Binding, Claims, Codec, SignedCodec};
///
/// let codec = SignedCodec::new([[7u8; 32]])?;
/// let claims = Claims { endpoint: b"10.0.0.7:8080".to_vec(), issued: Some(1_700_000_000), refreshed: Some(1_700_000_000) };
/// let binding = Binding { name: "shop", scope: "default/shop/0" };
/// let token = codec.encode(&claims, binding).unwrap();
/// assert!(!token.contains("10.0.0.7"));
/// assert_eq!(codec.decode(&token, binding), Some(claims));
/// // Another rule, or another cookie name, never accepts it.
/// assert_eq!(codec.decode(&token, Binding { name: "shop", scope: "default/shop/1" }), None);
/// # Ok::<(), tower_session_persistence::policy::PolicyError>(())
/// ```
#[derive(Clone)]
pub struct SignedCodec {
    keys: Vec<[u8; 32]>,
}

impl fmt::Debug for SignedCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("SignedCodec").field("keys", &self.keys.len()).finish()
    }
}

impl SignedCodec {
    /// A codec that signs with the first key and verifies with all of them.
    ///
    /// # Errors
    ///
    /// A [`PolicyError`] on field `keys` when there is no key, or on `keys[i]` when a key is
    /// shorter than 32 bytes.
    pub fn new<I>(keys: I) -> Result<Self, PolicyError>
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]>,
    {
        let mut derived = Vec::new();
        for (i, key) in keys.into_iter().enumerate() {
            let key = key.as_ref();
            if key.len() < MIN_KEY_LEN {
                return Err(PolicyError::new(
                    format!("keys[{i}]"),
                    format!("must be at least {MIN_KEY_LEN} bytes long, found {}", key.len()),
                ));
            }
            let mut okm = [0u8; 32];
            Hkdf::<Sha256>::new(Some(LABEL), key)
                .expand(b"aes-128-siv", &mut okm)
                .expect("32 bytes is a valid HKDF-SHA256 output length");
            derived.push(okm);
        }
        if derived.is_empty() {
            return Err(PolicyError::new("keys", "at least one key is required"));
        }
        Ok(Self { keys: derived })
    }

    fn cipher(key: &[u8; 32]) -> Aes128Siv {
        Aes128Siv::new(key.into())
    }
}

fn associated_data<'a>(header: &'a [u8], binding: Binding<'a>) -> [&'a [u8]; 4] {
    [LABEL, binding.name.as_bytes(), binding.scope.as_bytes(), header]
}

fn seconds(time: u64) -> [u8; 4] {
    // Seconds since 1970 fit in a u32 until 2106; later times saturate rather than wrap.
    u32::try_from(time).unwrap_or(u32::MAX).to_be_bytes()
}

impl Codec for SignedCodec {
    fn encode(&self, claims: &Claims, binding: Binding<'_>) -> Option<String> {
        let mut header = [0u8; HEADER_LEN];
        header[0] = VERSION;
        header[1..5].copy_from_slice(&seconds(claims.issued.unwrap_or(0)));
        header[5..9].copy_from_slice(&seconds(claims.refreshed.unwrap_or(0)));
        let sealed = Self::cipher(&self.keys[0])
            .encrypt(associated_data(&header, binding), &claims.endpoint)
            .expect("AES-SIV takes any plaintext with four associated data items");
        let mut bytes = Vec::with_capacity(HEADER_LEN + sealed.len());
        bytes.extend_from_slice(&header);
        bytes.extend_from_slice(&sealed);
        // Never write a token that `decode` would refuse for its length.
        Some(URL_SAFE_NO_PAD.encode(bytes)).filter(|token| token.len() <= MAX_TOKEN_LEN)
    }

    fn decode(&self, token: &str, binding: Binding<'_>) -> Option<Claims> {
        if token.len() > MAX_TOKEN_LEN {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
        if bytes.len() < HEADER_LEN + TAG_LEN || bytes[0] != VERSION {
            return None;
        }
        let (header, sealed) = bytes.split_at(HEADER_LEN);
        let endpoint = self.keys.iter().find_map(|key| {
            Self::cipher(key).decrypt(associated_data(header, binding), sealed).ok()
        })?;
        let time = |range: std::ops::Range<usize>| {
            u64::from(u32::from_be_bytes(header[range].try_into().expect("4 bytes")))
        };
        Some(Claims { endpoint, issued: Some(time(1..5)), refreshed: Some(time(5..9)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Binding<'static> = Binding { name: "s", scope: "r/0" };

    fn claims() -> Claims {
        Claims {
            endpoint: b"127.0.0.1:9001".to_vec(),
            issued: Some(1_800_000_000),
            refreshed: Some(1_800_000_100),
        }
    }

    #[test]
    fn round_trips_and_hides_the_endpoint() {
        let codec = SignedCodec::new([[1u8; 32]]).unwrap();
        let token = codec.encode(&claims(), B).unwrap();
        assert_eq!(codec.decode(&token, B), Some(claims()));
        let raw = URL_SAFE_NO_PAD.decode(&token).unwrap();
        assert!(!raw.windows(9).any(|w| w == b"127.0.0.1"), "endpoint visible in {raw:?}");
        // Short keys (8 bytes, less than one AES block) work too.
        let short = Claims { endpoint: 7u64.to_be_bytes().to_vec(), ..claims() };
        assert_eq!(codec.decode(&codec.encode(&short, B).unwrap(), B), Some(short));
        let empty = Claims { endpoint: Vec::new(), ..claims() };
        assert_eq!(codec.decode(&codec.encode(&empty, B).unwrap(), B), Some(empty));
        // The longest endpoint that fits the length limit round-trips; longer ones are not
        // written at all (they used to be, and were then refused by `decode`).
        let longest = Claims { endpoint: vec![b'x'; 743], ..claims() };
        assert_eq!(codec.decode(&codec.encode(&longest, B).unwrap(), B), Some(longest));
        assert_eq!(codec.encode(&Claims { endpoint: vec![b'x'; 744], ..claims() }, B), None);
    }

    #[test]
    fn rejects_every_single_bit_flip_and_truncation() {
        let codec = SignedCodec::new([[1u8; 32]]).unwrap();
        let raw = URL_SAFE_NO_PAD.decode(codec.encode(&claims(), B).unwrap()).unwrap();
        for i in 0..raw.len() {
            for bit in 0..8 {
                let mut bad = raw.clone();
                bad[i] ^= 1 << bit;
                assert_eq!(
                    codec.decode(&URL_SAFE_NO_PAD.encode(&bad), B),
                    None,
                    "byte {i} bit {bit}"
                );
            }
            assert_eq!(codec.decode(&URL_SAFE_NO_PAD.encode(&raw[..i]), B), None, "len {i}");
        }
        let mut longer = raw.clone();
        longer.push(0);
        assert_eq!(codec.decode(&URL_SAFE_NO_PAD.encode(&longer), B), None);
    }

    #[test]
    fn binding_and_keys_matter() {
        let old = SignedCodec::new([[1u8; 32]]).unwrap();
        let rotated = SignedCodec::new([[2u8; 32], [1u8; 32]]).unwrap();
        let other = SignedCodec::new([[3u8; 32]]).unwrap();
        let token = old.encode(&claims(), B).unwrap();
        assert_eq!(rotated.decode(&token, B), Some(claims()), "older keys still verify");
        assert_eq!(other.decode(&token, B), None);
        assert_eq!(old.decode(&rotated.encode(&claims(), B).unwrap(), B), None, "new key signs");
        assert_eq!(old.decode(&token, Binding { name: "t", scope: "r/0" }), None);
        assert_eq!(old.decode(&token, Binding { name: "s", scope: "r/1" }), None);
    }

    #[test]
    fn refuses_bad_keys_and_garbage() {
        assert_eq!(SignedCodec::new([[0u8; 31]]).unwrap_err().field(), "keys[0]");
        assert_eq!(SignedCodec::new(Vec::<Vec<u8>>::new()).unwrap_err().field(), "keys");
        let codec = SignedCodec::new([[1u8; 32]]).unwrap();
        for garbage in ["", "x", "!!!!", "127.0.0.1:9001", &"A".repeat(5000), "AQAAAAAAAAAA"] {
            assert_eq!(codec.decode(garbage, B), None, "{garbage:?}");
        }
        assert_eq!(format!("{codec:?}"), "SignedCodec { keys: 1 }", "no key material in Debug");
    }
}
