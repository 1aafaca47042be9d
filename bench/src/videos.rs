//! Real H.264 + AAC videos for local clusters, tests and the demo (`smart demo
//! --real-video`): made once with ffmpeg (`smart_vod::realvideo`) into a cache directory
//! that later runs reuse, then served by an in-process origin like the generated ones.
//!
//! The cache is `$SMART_VIDEO_CACHE`, else `smart-real-videos` in the temporary directory,
//! with one subdirectory per parameter set; making is serialized across processes by an
//! exclusive lock on a file there (test binaries run in parallel), and a file whose
//! parameters match its stamp is not made again.
//!
//! ## Layout
//! - [`real_video`], [`cache_dir`], [`VideoError`]; [`serve_origin`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use smart_vod::origin::{Origin, Video};
use smart_vod::realvideo::{RealVideo, RealVideoError, make_catalogue};

/// Environment variable naming the cache directory.
pub const CACHE_ENV: &str = "SMART_VIDEO_CACHE";

/// Why a real video could not be made.
#[derive(Debug, thiserror::Error)]
pub enum VideoError {
    /// ffmpeg failed or the parameters were refused.
    #[error("making a real video: {0}")]
    Make(#[from] RealVideoError),
    /// Cache or origin I/O.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

/// The cache directory.
pub fn cache_dir() -> PathBuf {
    std::env::var_os(CACHE_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("smart-real-videos"))
}

/// A real video of `duration` at `kbps` (TS multiplex rate), made with `ffmpeg` unless the
/// cache has it. Encoded with x264's `ultrafast` preset: tests and demos need a true
/// stream quickly, not a pretty one.
pub fn real_video(ffmpeg: &Path, duration: Duration, kbps: u64) -> Result<Video, VideoError> {
    let params = RealVideo {
        preset: "ultrafast".into(),
        ..RealVideo::new(kbps, duration)
    };
    let dir = cache_dir().join(format!("{kbps}k-{}ms", duration.as_millis()));
    std::fs::create_dir_all(&dir).map_err(|source| VideoError::Io {
        what: format!("creating {}", dir.display()),
        source,
    })?;
    let lock = std::fs::File::create(dir.join(".lock")).map_err(|source| VideoError::Io {
        what: "creating the cache lock".into(),
        source,
    })?;
    // Held until the video is read back: another process making the same file waits.
    let _held =
        nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| {
            VideoError::Io {
                what: "locking the video cache".into(),
                source: std::io::Error::from(e),
            }
        })?;
    let made = make_catalogue(ffmpeg, &dir, &[("v.ts".to_string(), params)])?;
    let path = &made[0].path;
    Video::from_file(path, None).map_err(|source| VideoError::Io {
        what: format!("reading {}", path.display()),
        source,
    })
}

/// Serves `videos` (name, video) from an in-process origin on loopback; its URL.
pub async fn serve_origin(videos: Vec<(String, Video)>) -> Result<String, VideoError> {
    let mut o = Origin::new();
    for (name, v) in videos {
        o.add(&name, v);
    }
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|source| VideoError::Io {
            what: "binding the origin".into(),
            source,
        })?;
    let addr = l.local_addr().map_err(|source| VideoError::Io {
        what: "the origin's address".into(),
        source,
    })?;
    tokio::spawn(Arc::new(o).serve(l));
    Ok(format!("http://{addr}"))
}
