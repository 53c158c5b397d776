//! `importImage` from a URL: the body streamed into a `.partial` file, its
//! SHA-256 computed on the way and checked before the file takes its name.
//!
//! What the user asked wrongly is [`HostError::Rejected`] (BAD_USER_INPUT):
//! a checksum that differs, a file over the size limit, a redirect loop, a
//! URL the server does not have (4xx). A server that does not answer or
//! stops sending for `stall_timeout` is [`HostError::Timeout`]; other
//! failures (5xx, a reset connection) are [`HostError::Failed`]. Nothing is
//! left behind in any of these, nor when the future is dropped (a cancel).

use std::path::Path;

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::{
    argv::QemuOptions,
    files::{self, PartialFile},
    img,
};
use crate::host::{DownloadLimits, HostError, ImportedImage, Report};

/// Downloads `url` into `dest` (see the module's documentation), reporting
/// the fraction received when the server announced the size.
pub(super) async fn fetch(
    options: &QemuOptions,
    url: &str,
    sha256: &str,
    dest: &Path,
    disk: bool,
    limits: &DownloadLimits,
    report: &Report<'_>,
) -> Result<ImportedImage, HostError> {
    if dest.exists() {
        return Err(HostError::Failed(format!(
            "{} already exists",
            dest.display()
        )));
    }
    if let Some(parent) = dest.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|source| HostError::Io {
                what: format!("creating {}", parent.display()),
                source,
            })?;
    }
    let partial = files::partial_of(dest);
    let _ = std::fs::remove_file(&partial);
    let guard = PartialFile(Some(partial.clone()));
    let (bytes, digest) = receive(url, &partial, limits, report).await?;
    if digest != sha256 {
        return Err(HostError::Rejected(format!(
            "the file at {} has SHA-256 {digest}, not {sha256} as given: nothing was imported",
            shown(url)
        )));
    }
    let image = match disk {
        true => ImportedImage {
            format: Some(files::inspect_disk_image(options, &partial).await?),
            size_bytes: img::info(&options.img_binary, &partial).await?.virtual_size,
        },
        false => ImportedImage {
            format: None,
            size_bytes: bytes,
        },
    };
    guard.rename_to(dest)?;
    Ok(image)
}

/// `url` as plans and operation records show it: a password in it hidden.
pub(super) fn shown(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(_) => crate::config::shown_url(url),
        Err(_) => url.to_string(),
    }
}

/// The client: redirects bounded, every wait bounded by the stall timeout.
fn client(limits: &DownloadLimits) -> Result<reqwest::Client, HostError> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::limited(limits.max_redirects))
        .connect_timeout(limits.stall_timeout)
        .user_agent(concat!("vman/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| HostError::Failed(format!("HTTP client: {e}")))
}

/// Streams the body of `url` into `partial`; its size and SHA-256 (hex).
async fn receive(
    url: &str,
    partial: &Path,
    limits: &DownloadLimits,
    report: &Report<'_>,
) -> Result<(u64, String), HostError> {
    // What messages show (a password hidden); `url` is what is fetched.
    let named = &shown(url);
    let stalled = || {
        HostError::Timeout(format!(
            "{named} sent nothing for {}",
            humantime::format_duration(limits.stall_timeout)
        ))
    };
    let request = client(limits)?.get(url).send();
    let mut response = tokio::time::timeout(limits.stall_timeout, request)
        .await
        .map_err(|_| stalled())?
        .map_err(|e| refused(named, e, limits))?;
    let status = response.status();
    if !status.is_success() {
        let said = format!("{named} answered {status}");
        return Err(match status.is_client_error() {
            true => HostError::Rejected(said),
            false => HostError::Failed(said),
        });
    }
    let total = response.content_length().unwrap_or(0);
    if total > limits.max_bytes {
        return Err(too_large(named, limits));
    }
    let mut file = tokio::fs::File::create(partial)
        .await
        .map_err(|source| HostError::Io {
            what: format!("creating {}", partial.display()),
            source,
        })?;
    let mut hasher = Sha256::new();
    let mut received = 0u64;
    report(0.0, total);
    loop {
        let chunk = tokio::time::timeout(limits.stall_timeout, response.chunk())
            .await
            .map_err(|_| stalled())?
            .map_err(|e| refused(named, e, limits))?;
        let Some(chunk) = chunk else { break };
        received += chunk.len() as u64;
        if received > limits.max_bytes {
            return Err(too_large(named, limits));
        }
        hasher.update(&chunk);
        file.write_all(&chunk)
            .await
            .map_err(|source| HostError::Io {
                what: format!("writing {}", partial.display()),
                source,
            })?;
        if total > 0 {
            report(received as f64 / total as f64, total);
        }
    }
    file.sync_all().await.map_err(|source| HostError::Io {
        what: format!("writing {}", partial.display()),
        source,
    })?;
    report(1.0, received);
    let digest = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((received, digest))
}

fn too_large(url: &str, limits: &DownloadLimits) -> HostError {
    HostError::Rejected(format!(
        "{url} is larger than storage.download_max_bytes ({} bytes)",
        limits.max_bytes
    ))
}

/// A request to `url` (as shown) that failed: a redirect loop is the
/// user's; a timeout and the rest are the network's.
fn refused(url: &str, e: reqwest::Error, limits: &DownloadLimits) -> HostError {
    let e = e.without_url();
    if e.is_redirect() {
        return HostError::Rejected(format!(
            "{url} redirects more than {} times (a loop?)",
            limits.max_redirects
        ));
    }
    if e.is_timeout() {
        return HostError::Timeout(format!(
            "{url} did not answer within {}",
            humantime::format_duration(limits.stall_timeout)
        ));
    }
    // The chain says why (connection refused, reset, a TLS failure).
    let mut text = format!("{url}: {e}");
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    HostError::Failed(text)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_password_in_a_url_is_not_shown() {
        assert_eq!(
            super::shown("https://me:secret@example.org/a.iso"),
            "https://me:***@example.org/a.iso"
        );
        assert_eq!(
            super::shown("http://example.org/a.iso"),
            "http://example.org/a.iso"
        );
    }
}
