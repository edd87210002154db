//! The sealed codec: an AEAD over the whole token, so that nothing in it is readable.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use sha2::Sha256;

use super::{Binding, Claims, Codec, Decoded, MIN_KEY_LEN};
use crate::policy::PolicyError;

const VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Version byte, key id byte, nonce: the only bytes in clear.
const HEADER_LEN: usize = 2 + NONCE_LEN;
/// Issue time, refresh time (both `u32` seconds) and the endpoint key's length (`u16`).
const FIXED_LEN: usize = 10;
/// The plaintext is padded to a multiple of this, so that a token's length says nothing about
/// which endpoint it names unless endpoint keys differ in length by a whole block.
const BLOCK: usize = 32;
/// The domain label: the HKDF salt and the start of the associated data. A different label from
/// the signed codec's, so the same configured keys yield unrelated subkeys in each codec.
const LABEL: &[u8] = b"tower-session-persistence/sealed/v1";
/// Work per request stays bounded whatever a client sends; tokens that would be longer are
/// never written either.
const MAX_TOKEN_LEN: usize = 1024;

/// Sealed tokens: tamper-evident, replica-safe, and opaque about everything, even about
/// whether two clients share an endpoint.
///
/// A token is `base64url(version ‖ key id ‖ nonce ‖ ciphertext ‖ tag)`, sealed with
/// XChaCha20-Poly1305 (the `chacha20poly1305` crate, RustCrypto) under a fresh random 192-bit
/// nonce. The ciphertext holds the issue time, the refresh time and the endpoint's key, padded
/// to a multiple of 32 bytes; the associated data binds the codec's label, the version, the key
/// id, the session name and the scope. Only the version and a one-byte key id are in clear; two
/// tokens for the same endpoint, issued in the same second, share nothing else.
///
/// Key rotation: the first key seals, every key opens. Each key is at least 32 bytes and is
/// stretched with HKDF-SHA256 under a label of its own, so the same keys can serve this codec
/// and [`SignedCodec`](super::SignedCodec) at once. The key id (eight bits of an HKDF output,
/// not of the key) lets a decoder try only the matching key; it is the same for every token
/// sealed under one key, so it tells nothing about the session.
///
/// Tokens longer than 1024 characters are refused without any cryptography, and an endpoint
/// key too long to fit in such a token is not written (`encode` returns `None`).
///
/// ```
/// use tower_session_persistence::token::{Binding, Claims, Codec, SealedCodec};
///
/// let codec = SealedCodec::new([[7u8; 32]])?;
/// let claims = Claims { endpoint: b"10.0.0.7:8080".to_vec(), issued: Some(1_700_000_000), refreshed: Some(1_700_000_000) };
/// let binding = Binding { name: "shop", scope: "default/shop/0" };
/// let token = codec.encode(&claims, binding).unwrap();
/// assert_eq!(codec.decode(&token, binding), Some(claims.clone()));
/// // A fresh nonce every time: two clients on one endpoint cannot tell.
/// assert_ne!(codec.encode(&claims, binding).unwrap(), token);
/// // Another rule, or another cookie name, never accepts it.
/// assert_eq!(codec.decode(&token, Binding { name: "shop", scope: "default/shop/1" }), None);
/// # Ok::<(), tower_session_persistence::policy::PolicyError>(())
/// ```
#[derive(Clone)]
pub struct SealedCodec {
    keys: Vec<SealingKey>,
}

#[derive(Clone)]
struct SealingKey {
    id: u8,
    cipher: XChaCha20Poly1305,
}

impl fmt::Debug for SealedCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("SealedCodec").field("keys", &self.keys.len()).finish()
    }
}

impl SealedCodec {
    /// A codec that seals with the first key and opens with any of them.
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
            let hkdf = Hkdf::<Sha256>::new(Some(LABEL), key);
            let mut okm = [0u8; 32];
            hkdf.expand(b"xchacha20-poly1305", &mut okm)
                .expect("32 bytes is a valid HKDF-SHA256 output length");
            let mut id = [0u8; 1];
            hkdf.expand(b"key-id", &mut id).expect("1 byte is a valid HKDF-SHA256 output length");
            derived.push(SealingKey { id: id[0], cipher: XChaCha20Poly1305::new(&okm.into()) });
        }
        if derived.is_empty() {
            return Err(PolicyError::new("keys", "at least one key is required"));
        }
        Ok(Self { keys: derived })
    }
}

/// Label, version and key id, then the name and the scope, each preceded by its length so that
/// no two bindings share an encoding. Written on the stack when it fits (any sensible name and
/// scope), and handed to `f`.
fn with_associated_data<T>(
    version: u8,
    key_id: u8,
    binding: Binding<'_>,
    f: impl FnOnce(&[u8]) -> T,
) -> T {
    let (name, scope) = (binding.name.as_bytes(), binding.scope.as_bytes());
    let len = LABEL.len() + 2 + 16 + name.len() + scope.len();
    let mut stack = [0u8; 256];
    let mut heap = Vec::new();
    let ad: &mut [u8] = if len <= stack.len() {
        &mut stack[..len]
    } else {
        heap.resize(len, 0);
        &mut heap
    };
    let mut at = 0;
    let mut put = |bytes: &[u8]| {
        ad[at..at + bytes.len()].copy_from_slice(bytes);
        at += bytes.len();
    };
    put(LABEL);
    put(&[version, key_id]);
    for part in [name, scope] {
        put(&(part.len() as u64).to_be_bytes());
        put(part);
    }
    f(ad)
}

fn seconds(time: u64) -> [u8; 4] {
    // Seconds since 1970 fit in a u32 until 2106; later times saturate rather than wrap.
    u32::try_from(time).unwrap_or(u32::MAX).to_be_bytes()
}

/// The base64url length of `raw` bytes without padding.
fn encoded_len(raw: usize) -> usize {
    (raw * 4).div_ceil(3)
}

/// The most bytes a token of `MAX_TOKEN_LEN` characters holds.
const MAX_RAW_LEN: usize = MAX_TOKEN_LEN * 3 / 4;

impl Codec for SealedCodec {
    fn encode(&self, claims: &Claims, binding: Binding<'_>) -> Option<String> {
        let endpoint = &claims.endpoint;
        let endpoint_len = u16::try_from(endpoint.len()).ok()?;
        let plain_len = (FIXED_LEN + endpoint.len()).next_multiple_of(BLOCK);
        let raw_len = HEADER_LEN + plain_len + TAG_LEN;
        if encoded_len(raw_len) > MAX_TOKEN_LEN {
            return None;
        }
        let key = &self.keys[0];
        // `version ‖ key id ‖ nonce ‖ ciphertext ‖ tag`, built in place on the stack.
        let mut raw = [0u8; MAX_RAW_LEN];
        let raw = &mut raw[..raw_len];
        let (header, rest) = raw.split_at_mut(HEADER_LEN);
        let (plain, tag) = rest.split_at_mut(plain_len);
        header[0] = VERSION;
        header[1] = key.id;
        // Without randomness there is no safe nonce: write no token rather than a weak one.
        getrandom::fill(&mut header[2..]).ok()?;
        plain[..4].copy_from_slice(&seconds(claims.issued.unwrap_or(0)));
        plain[4..8].copy_from_slice(&seconds(claims.refreshed.unwrap_or(0)));
        plain[8..FIXED_LEN].copy_from_slice(&endpoint_len.to_be_bytes());
        plain[FIXED_LEN..FIXED_LEN + endpoint.len()].copy_from_slice(endpoint);
        // The rest of `plain` stays zero: the padding.
        let nonce = XNonce::try_from(&header[2..]).ok()?;
        let sealed = with_associated_data(VERSION, key.id, binding, |ad| {
            key.cipher.encrypt_inout_detached(&nonce, ad, plain.into())
        })
        .ok()?;
        tag.copy_from_slice(&sealed);
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
        if raw.len() < HEADER_LEN + BLOCK + TAG_LEN || raw[0] != VERSION {
            return None;
        }
        let key_id = raw[1];
        let nonce = XNonce::try_from(&raw[2..HEADER_LEN]).ok()?;
        let (sealed, tag) = raw[HEADER_LEN..].split_at(raw.len() - HEADER_LEN - TAG_LEN);
        let tag = Tag::try_from(tag).ok()?;
        let mut plain = [0u8; MAX_RAW_LEN];
        let plain = &mut plain[..sealed.len()];
        // The tag is checked in constant time by the `chacha20poly1305` crate.
        let index = with_associated_data(VERSION, key_id, binding, |ad| {
            self.keys.iter().position(|key| {
                key.id == key_id && {
                    plain.copy_from_slice(sealed);
                    key.cipher
                        .decrypt_inout_detached(&nonce, ad, (&mut *plain).into(), &tag)
                        .is_ok()
                }
            })
        })?;
        // Authentic, hence written by `encode`; checked anyway, never indexed blindly.
        let fixed: [u8; FIXED_LEN] = plain.get(..FIXED_LEN)?.try_into().ok()?;
        let [i0, i1, i2, i3, r0, r1, r2, r3, l0, l1] = fixed;
        let issued = u64::from(u32::from_be_bytes([i0, i1, i2, i3]));
        let refreshed = u64::from(u32::from_be_bytes([r0, r1, r2, r3]));
        let len = usize::from(u16::from_be_bytes([l0, l1]));
        let endpoint = plain.get(FIXED_LEN..FIXED_LEN + len)?.to_vec();
        let claims = Claims { endpoint, issued: Some(issued), refreshed: Some(refreshed) };
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
    fn round_trips_and_hides_everything() {
        let codec = SealedCodec::new([[1u8; 32]]).unwrap();
        let token = codec.encode(&claims(), B).unwrap();
        assert_eq!(codec.decode(&token, B), Some(claims()));
        let raw = URL_SAFE_NO_PAD.decode(&token).unwrap();
        assert_eq!(raw.len(), HEADER_LEN + BLOCK + TAG_LEN);
        assert!(!raw.windows(9).any(|w| w == b"127.0.0.1"), "endpoint visible in {raw:?}");
        let issued = 1_800_000_000u32.to_be_bytes();
        assert!(!raw.windows(4).any(|w| w == issued), "issue time visible");
        // Same claims, different tokens, same length.
        let again = codec.encode(&claims(), B).unwrap();
        assert_ne!(again, token);
        assert_eq!(again.len(), token.len());
        // Endpoints of different lengths within one block cannot be told apart by length.
        let short = Claims { endpoint: b"a".to_vec(), ..claims() };
        assert_eq!(codec.encode(&short, B).unwrap().len(), token.len());
        let empty = Claims { endpoint: Vec::new(), ..claims() };
        assert_eq!(codec.decode(&codec.encode(&empty, B).unwrap(), B), Some(empty));
    }

    #[test]
    fn tokens_of_the_first_implementation_still_open() {
        // Sealed by the first implementation (heap buffers); clients hold such tokens.
        let codec = SealedCodec::new([[1u8; 32]]).unwrap();
        let known: [(&[u8], &str); 3] = [
            (
                b"127.0.0.1:9001",
                "AV89C0oYPaykiCXLqEcjcnDpKL89184u1E6fAoAtdc2bGYqP55Qp3kLgOwNEJnYpHTxHOei1GK2mTJ5HzJ1G9mT76RKl66S6vhg",
            ),
            (
                b"",
                "AV_nUCJ9EPBFAWtJABLoUibyqDT_J6q7oCjRvJilR4fAGA_yZke45lDQeTkI1g68s7ZU9y154SPYtR96drnXN2EeBPqWzNKzMYo",
            ),
            (
                &[b'x'; 40],
                "AV-KkWO636p_T5pkuiCOaV2kWj88PowccNeTazsZfxjDFVqfoFBPBkKho_LusEacBPGb1fTEDGI8yojHMBuRen3DdDCxy1pf-LghZO7pXpSqr6TCkyYUF_1Q_x9niIB7csJqsGTIQYdoKA",
            ),
        ];
        for (endpoint, token) in known {
            let claims = Claims { endpoint: endpoint.to_vec(), ..claims() };
            assert_eq!(codec.decode(token, B), Some(claims.clone()));
            // And new tokens have the same length and layout.
            assert_eq!(codec.encode(&claims, B).unwrap().len(), token.len());
        }
        // A binding too long for the stack buffer works the same way.
        let long = "r/".repeat(200);
        let binding = Binding { name: "s", scope: &long };
        let token = codec.encode(&claims(), binding).unwrap();
        assert_eq!(codec.decode(&token, binding), Some(claims()));
        assert_eq!(codec.decode(&token, Binding { name: "s", scope: &long[1..] }), None);
    }

    #[test]
    fn rejects_every_single_bit_flip_and_truncation() {
        let codec = SealedCodec::new([[1u8; 32]]).unwrap();
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
        let old = SealedCodec::new([[1u8; 32]]).unwrap();
        let rotated = SealedCodec::new([[2u8; 32], [1u8; 32]]).unwrap();
        let other = SealedCodec::new([[3u8; 32]]).unwrap();
        let token = old.encode(&claims(), B).unwrap();
        assert_eq!(rotated.decode(&token, B), Some(claims()), "older keys still open");
        assert_eq!(other.decode(&token, B), None);
        assert_eq!(old.decode(&rotated.encode(&claims(), B).unwrap(), B), None, "new key seals");
        assert_eq!(old.decode(&token, Binding { name: "t", scope: "r/0" }), None);
        assert_eq!(old.decode(&token, Binding { name: "s", scope: "r/1" }), None);
        // Lengths are bound too: moving a byte from the name to the scope changes the binding.
        let ab = Binding { name: "ab", scope: "c" };
        let token = old.encode(&claims(), ab).unwrap();
        assert_eq!(old.decode(&token, Binding { name: "a", scope: "bc" }), None);
    }

    #[test]
    fn signed_and_sealed_tokens_never_cross() {
        let keys = [[9u8; 32]];
        let sealed = SealedCodec::new(keys).unwrap();
        let signed = super::super::SignedCodec::new(keys).unwrap();
        assert_eq!(signed.decode(&sealed.encode(&claims(), B).unwrap(), B), None);
        assert_eq!(sealed.decode(&signed.encode(&claims(), B).unwrap(), B), None);
    }

    #[test]
    fn refuses_bad_keys_garbage_and_oversized_endpoints() {
        assert_eq!(SealedCodec::new([[0u8; 31]]).unwrap_err().field(), "keys[0]");
        assert_eq!(SealedCodec::new(Vec::<Vec<u8>>::new()).unwrap_err().field(), "keys");
        let codec = SealedCodec::new([[1u8; 32]]).unwrap();
        for garbage in ["", "x", "!!!!", "127.0.0.1:9001", &"A".repeat(5000), &"A".repeat(100)] {
            assert_eq!(codec.decode(garbage, B), None, "{garbage:?}");
        }
        assert_eq!(format!("{codec:?}"), "SealedCodec { keys: 1 }", "no key material in Debug");
        // The largest endpoint that fits, and one byte more.
        let fits = (0..2000)
            .rev()
            .find(|&n| {
                let c = Claims { endpoint: vec![b'x'; n], ..claims() };
                codec.encode(&c, B).is_some()
            })
            .unwrap();
        let c = Claims { endpoint: vec![b'x'; fits], ..claims() };
        let token = codec.encode(&c, B).unwrap();
        assert!(token.len() <= MAX_TOKEN_LEN);
        assert_eq!(codec.decode(&token, B), Some(c));
        let c = Claims { endpoint: vec![b'x'; fits + 1], ..claims() };
        assert_eq!(codec.encode(&c, B), None);
    }
}
