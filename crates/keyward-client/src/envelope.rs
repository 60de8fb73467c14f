//! Streaming envelope encryption of large files.
//!
//! The service hands out a fresh AES-256 data key (plaintext plus a copy encrypted under the KMS key); the
//! file is encrypted here, in constant memory, as a sequence of authenticated segments, in the manner of
//! Tink's streaming AEAD and the AWS Encryption SDK:
//!
//! ```text
//! header  = "KWS1" | 0x01 | u32 segment_size | salt[32] | nonce_prefix[7] | u16 len | wrapped data key
//! key     = HKDF-SHA-256(salt, data key, info = header)
//! segment i = AES-256-GCM(key, nonce = nonce_prefix | u32 i | last?1:0, plaintext[i])
//! ```
//!
//! The header is bound through the key derivation, each segment's position through its nonce, and the end of
//! the file through the last-segment flag: a truncated, reordered, spliced or altered file fails to decrypt.
//! The data key is zeroized as soon as the file key is derived.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use aws_lc_rs::hkdf::{Salt, HKDF_SHA256};
use keyward_api::{Context, DataKeyRequest};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use zeroize::Zeroizing;

use crate::{Client, Error, Result};

/// File magic.
pub const MAGIC: &[u8; 4] = b"KWS1";
/// Default plaintext segment size.
pub const DEFAULT_SEGMENT: u32 = 64 * 1024;
const TAG: usize = 16;
const PREFIX: usize = 7;

struct FileKey(LessSafeKey);

impl FileKey {
    fn derive(data_key: &[u8], salt: &[u8], header: &[u8]) -> Result<FileKey> {
        let prk = Salt::new(HKDF_SHA256, salt).extract(data_key);
        let info = [header];
        let okm = prk
            .expand(&info, &AES_256_GCM)
            .map_err(|_| Error::Invalid("key derivation failed".into()))?;
        Ok(FileKey(LessSafeKey::new(UnboundKey::from(okm))))
    }

    fn nonce(prefix: &[u8; PREFIX], i: u32, last: bool) -> Nonce {
        let mut n = [0u8; 12];
        n[..PREFIX].copy_from_slice(prefix);
        n[PREFIX..PREFIX + 4].copy_from_slice(&i.to_be_bytes());
        n[11] = u8::from(last);
        Nonce::assume_unique_for_key(n)
    }
}

fn corrupt() -> Error {
    Error::Invalid(
        "the file is truncated, reordered or altered, or was encrypted under another context"
            .into(),
    )
}

async fn fill<R: AsyncRead + Unpin>(r: &mut R, buf: &mut Vec<u8>, want: usize) -> Result<()> {
    buf.clear();
    buf.resize(want, 0);
    let mut n = 0;
    while n < want {
        let got = r
            .read(&mut buf[n..])
            .await
            .map_err(|e| Error::Invalid(format!("read: {e}")))?;
        if got == 0 {
            break;
        }
        n += got;
    }
    buf.truncate(n);
    Ok(())
}

/// Encrypts `input` into `output` under a fresh data key from `key`. Returns the plaintext length.
pub async fn encrypt<R, W>(
    client: &Client,
    key: &str,
    context: Option<Context>,
    segment: u32,
    mut input: R,
    mut output: W,
) -> Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if !(1024..=16 * 1024 * 1024).contains(&segment) {
        return Err(Error::Invalid(
            "segment size must be 1 KiB to 16 MiB".into(),
        ));
    }
    let dk = client
        .data_key(
            key,
            &DataKeyRequest {
                spec: "AES_256".into(),
                context,
                include_plaintext: Some(true),
            },
        )
        .await?;
    let plaintext_key = dk
        .plaintext
        .ok_or_else(|| Error::Invalid("the service returned no data key".into()))?;
    let wrapped = dk.ciphertext.0;
    let wrapped_len =
        u16::try_from(wrapped.len()).map_err(|_| Error::Invalid("wrapped key too long".into()))?;
    let mut salt = [0u8; 32];
    let mut prefix = [0u8; PREFIX];
    aws_lc_rs::rand::fill(&mut salt)
        .map_err(|_| Error::Invalid("random generator failed".into()))?;
    aws_lc_rs::rand::fill(&mut prefix)
        .map_err(|_| Error::Invalid("random generator failed".into()))?;
    let mut header = Vec::with_capacity(50 + wrapped.len());
    header.extend_from_slice(MAGIC);
    header.push(1);
    header.extend_from_slice(&segment.to_be_bytes());
    header.extend_from_slice(&salt);
    header.extend_from_slice(&prefix);
    header.extend_from_slice(&wrapped_len.to_be_bytes());
    header.extend_from_slice(&wrapped);
    let fk = FileKey::derive(plaintext_key.expose(), &salt, &header)?;
    drop(plaintext_key);
    output
        .write_all(&header)
        .await
        .map_err(|e| Error::Invalid(format!("write: {e}")))?;

    let seg = segment as usize;
    let mut cur = Zeroizing::new(Vec::with_capacity(seg + TAG));
    let mut next = Zeroizing::new(Vec::with_capacity(seg + TAG));
    fill(&mut input, &mut cur, seg).await?;
    let mut total = 0u64;
    for i in 0u32.. {
        fill(&mut input, &mut next, seg).await?;
        let last = next.is_empty();
        total += cur.len() as u64;
        let tag = fk
            .0
            .seal_in_place_separate_tag(FileKey::nonce(&prefix, i, last), Aad::empty(), &mut cur)
            .map_err(|_| Error::Invalid("encryption failed".into()))?;
        output
            .write_all(&cur)
            .await
            .map_err(|e| Error::Invalid(format!("write: {e}")))?;
        output
            .write_all(tag.as_ref())
            .await
            .map_err(|e| Error::Invalid(format!("write: {e}")))?;
        if last {
            break;
        }
        std::mem::swap(&mut cur, &mut next);
        if i == u32::MAX - 1 {
            return Err(Error::Invalid("file too large for one stream".into()));
        }
    }
    output
        .flush()
        .await
        .map_err(|e| Error::Invalid(format!("write: {e}")))?;
    Ok(total)
}

/// Decrypts a stream made by [`encrypt`]. Plaintext is written segment by segment once each is verified;
/// callers writing to a file should write to a temporary name and rename only on success.
pub async fn decrypt<R, W>(
    client: &Client,
    context: Option<Context>,
    mut input: R,
    mut output: W,
) -> Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut fixed = [0u8; 4 + 1 + 4 + 32 + PREFIX + 2];
    input.read_exact(&mut fixed).await.map_err(|_| corrupt())?;
    if &fixed[..4] != MAGIC || fixed[4] != 1 {
        return Err(Error::Invalid("not a Keyward encrypted file".into()));
    }
    let segment = u32::from_be_bytes([fixed[5], fixed[6], fixed[7], fixed[8]]);
    if !(1024..=16 * 1024 * 1024).contains(&segment) {
        return Err(corrupt());
    }
    let salt = &fixed[9..41];
    let mut prefix = [0u8; PREFIX];
    prefix.copy_from_slice(&fixed[41..41 + PREFIX]);
    let wrapped_len = u16::from_be_bytes([fixed[48], fixed[49]]) as usize;
    let mut wrapped = vec![0u8; wrapped_len];
    input
        .read_exact(&mut wrapped)
        .await
        .map_err(|_| corrupt())?;
    let mut header = fixed.to_vec();
    header.extend_from_slice(&wrapped);
    let dk = client.decrypt(None, &wrapped, context, None).await?;
    let fk = FileKey::derive(dk.plaintext.expose(), salt, &header)?;
    drop(dk);

    let seg = segment as usize + TAG;
    let mut cur = Zeroizing::new(Vec::with_capacity(seg));
    let mut next = Zeroizing::new(Vec::with_capacity(seg));
    fill(&mut input, &mut cur, seg).await?;
    let mut total = 0u64;
    for i in 0u32.. {
        fill(&mut input, &mut next, seg).await?;
        let last = next.is_empty();
        if cur.len() < TAG || (!last && cur.len() != seg) {
            return Err(corrupt());
        }
        let plain =
            fk.0.open_in_place(FileKey::nonce(&prefix, i, last), Aad::empty(), &mut cur)
                .map_err(|_| corrupt())?;
        total += plain.len() as u64;
        output
            .write_all(plain)
            .await
            .map_err(|e| Error::Invalid(format!("write: {e}")))?;
        if last {
            break;
        }
        std::mem::swap(&mut cur, &mut next);
    }
    output
        .flush()
        .await
        .map_err(|e| Error::Invalid(format!("write: {e}")))?;
    Ok(total)
}
