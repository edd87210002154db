//! The signed codec: a keyed MAC over the whole token, with the endpoint's key encrypted.

use std::fmt;
use std::sync::{Mutex, TryLockError};

use aes_siv::Tag;
use aes_siv::aead::KeyInit;
use aes_siv::siv::Aes128Siv;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hkdf::Hkdf;
use sha2::Sha256;

use super::{Binding, Claims, Codec, Decoded, MIN_KEY_LEN};
use crate::policy::PolicyError;

const VERSION: u8 = 1;
/// Version byte, issue time and refresh time (both `u32` seconds).
const HEADER_LEN: usize = 9;
const TAG_LEN: usize = 16;
/// The domain label mixed into every token: a token of another codec or version never verifies.
const LABEL: &[u8] = b"tower-session-persistence/signed/v1";
/// Work per request stays bounded whatever a client sends.
const MAX_TOKEN_LEN: usize = 1024;
/// The most bytes a token of `MAX_TOKEN_LEN` characters holds.
const MAX_RAW_LEN: usize = MAX_TOKEN_LEN * 3 / 4;

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
pub struct SignedCodec {
    keys: Vec<SigningKey>,
}

/// One derived key, and a cipher made from it, kept for reuse: making one costs two AES key
/// schedules and a CMAC subkey, a good part of a token's cost.
struct SigningKey {
    key: [u8; 32],
    ready: Mutex<Aes128Siv>,
}

impl SigningKey {
    fn new(key: [u8; 32]) -> Self {
        Self { key, ready: Mutex::new(Aes128Siv::new(&key.into())) }
    }

    /// Runs `f` with the kept cipher when no other thread is using it, else with a new one:
    /// never waits. Every use of the cipher starts from its reset state (`s2v` finishes each
    /// MAC with a reset), so a kept cipher behaves exactly as a new one.
    fn with<T>(&self, f: impl FnOnce(&mut Aes128Siv) -> T) -> T {
        match self.ready.try_lock() {
            Ok(mut cipher) => f(&mut cipher),
            // In use, or poisoned by a panic in the middle of a use: a fresh one.
            Err(TryLockError::WouldBlock | TryLockError::Poisoned(_)) => {
                f(&mut Aes128Siv::new(&self.key.into()))
            }
        }
    }
}

impl Clone for SignedCodec {
    fn clone(&self) -> Self {
        Self { keys: self.keys.iter().map(|k| SigningKey::new(k.key)).collect() }
    }
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
            derived.push(SigningKey::new(okm));
        }
        if derived.is_empty() {
            return Err(PolicyError::new("keys", "at least one key is required"));
        }
        Ok(Self { keys: derived })
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
        let endpoint = &claims.endpoint;
        let raw_len = HEADER_LEN + TAG_LEN + endpoint.len();
        // Never write a token that `decode` would refuse for its length.
        if raw_len.checked_mul(4)?.div_ceil(3) > MAX_TOKEN_LEN {
            return None;
        }
        // `version ‖ issued ‖ refreshed ‖ tag ‖ ciphertext`, built in place on the stack.
        let mut raw = [0u8; MAX_RAW_LEN];
        let raw = &mut raw[..raw_len];
        let (header, sealed) = raw.split_at_mut(HEADER_LEN);
        header[0] = VERSION;
        header[1..5].copy_from_slice(&seconds(claims.issued.unwrap_or(0)));
        header[5..9].copy_from_slice(&seconds(claims.refreshed.unwrap_or(0)));
        let (tag, ciphertext) = sealed.split_at_mut(TAG_LEN);
        ciphertext.copy_from_slice(endpoint);
        let siv = self.keys[0]
            .with(|cipher| {
                cipher.encrypt_inout_detached(associated_data(header, binding), ciphertext.into())
            })
            .expect("AES-SIV takes any plaintext with four associated data items");
        tag.copy_from_slice(&siv);
        Some(URL_SAFE_NO_PAD.encode(raw))
    }

    fn decode(&self, token: &str, binding: Binding<'_>) -> Option<Claims> {
        self.decode_with_key(token, binding).map(|decoded| decoded.claims)
    }

    fn decode_with_key(&self, token: &str, binding: Binding<'_>) -> Option<Decoded> {
        if token.len() > MAX_TOKEN_LEN {
            return None;
        }
        let mut raw = [0u8; MAX_TOKEN_LEN];
        let len = URL_SAFE_NO_PAD.decode_slice(token, &mut raw).ok()?;
        let raw = &raw[..len];
        if raw.len() < HEADER_LEN + TAG_LEN || raw[0] != VERSION {
            return None;
        }
        let (header, sealed) = raw.split_at(HEADER_LEN);
        let (tag, ciphertext) = sealed.split_at(TAG_LEN);
        let tag = Tag::try_from(tag).ok()?;
        let mut plain = [0u8; MAX_RAW_LEN];
        let plain = &mut plain[..ciphertext.len()];
        // The tag is checked in constant time by the `aes-siv` crate.
        let index = self.keys.iter().position(|key| {
            plain.copy_from_slice(ciphertext);
            key.with(|cipher| {
                cipher
                    .decrypt_inout_detached(
                        associated_data(header, binding),
                        (&mut *plain).into(),
                        &tag,
                    )
                    .is_ok()
            })
        })?;
        let time = |range: std::ops::Range<usize>| {
            u64::from(u32::from_be_bytes(header[range].try_into().expect("4 bytes")))
        };
        let claims = Claims {
            endpoint: plain.to_vec(),
            issued: Some(time(1..5)),
            refreshed: Some(time(5..9)),
        };
        Some(Decoded::primary(claims).with_key(index))
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
    fn tokens_keep_their_format() {
        // Written by the first implementation (a new cipher per call, allocating): tokens in
        // clients' hands must keep verifying, and new ones must be byte-identical.
        let codec = SignedCodec::new([[1u8; 32]]).unwrap();
        let known: [(&[u8], &str); 3] = [
            (b"127.0.0.1:9001", "AWtJ0gBrSdJk10EIMcl6Ak-I43YStlxrF8o13X981sjYfaOle_6I"),
            (b"", "AWtJ0gBrSdJk_zzoEXbIXgt8J1vHcgExXA"),
            (
                b"abcdefghijklmnopqrstuvwxyz0123456789",
                "AWtJ0gBrSdJk_hn4HLaGPSwdpVb9NL6g5TH62omBAaEsHVlDWFVoUumeUL6xA3RjkvGeDg9ih_s_-DFR4g",
            ),
        ];
        for (endpoint, token) in known {
            let claims = Claims { endpoint: endpoint.to_vec(), ..claims() };
            assert_eq!(codec.encode(&claims, B).as_deref(), Some(token));
            assert_eq!(codec.decode(token, B), Some(claims));
        }
        // A clone, and a cipher in use by another caller, change nothing.
        let clone = codec.clone();
        let _busy = codec.keys[0].ready.lock().unwrap();
        assert_eq!(clone.encode(&claims(), B).as_deref(), Some(known[0].1));
        assert_eq!(codec.encode(&claims(), B).as_deref(), Some(known[0].1));
        assert_eq!(codec.decode(known[0].1, B), Some(claims()));
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
