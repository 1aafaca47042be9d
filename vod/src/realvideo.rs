//! Real test videos: H.264 + AAC in constant-bitrate MPEG-TS, encoded by ffmpeg from its
//! synthetic sources (`testsrc2` picture with a running clock, `sine` tone), so that real
//! players show a picture and play sound. The built-in generator ([`crate::ts`]) stays for
//! unit tests, which must not need ffmpeg.
//!
//! Constant bitrate end to end: x264 in CBR with HRD signalling (`nal-hrd=cbr`, VBV buffer of
//! one second), AAC at a fixed rate, and the TS muxer's `muxrate` padding with null packets
//! to the exact multiplex rate, which is the rate the distributor paces progressive viewers
//! at (the origin reads it back from the PCRs). Keyframes every `gop` (2 s by default, no
//! scene-cut keyframes), so HLS segments are one GOP each.
//!
//! ffmpeg writes the video through its HLS muxer, one file per GOP, and the files are then
//! concatenated into the one video the origin serves. Why: at each of those boundaries every
//! stream starts a new PES (the muxer flushes), so the distributor's byte-range segments cut
//! there lose no audio in a player that demuxes each segment on its own (hls.js); a plain TS
//! muxer packs ~0.5 s of audio per PES across the keyframes. The TS muxer is the same one
//! throughout, so continuity counters and PCRs run on across the joins: the result is one
//! valid CBR stream.
//!
//! ## Layout
//! - [`RealVideo`]: one video's parameters; [`RealVideo::ffmpeg_args`], [`RealVideo::make`].
//! - [`catalogue`], [`make_catalogue`]: a set of videos into a directory (what `vod
//!   make-video --real --dir` and the demo use).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::hls::{DEFAULT_TARGET, MediaPlaylist, SegmentIndex};
use crate::scan;

/// The lowest multiplex rate the muxer keeps valid (below it the TS muxer cannot hold its
/// PCR ahead of the DTS).
pub const MIN_KBPS: u64 = 400;

/// Why a video was not made.
#[derive(Debug, thiserror::Error)]
pub enum RealVideoError {
    /// Bad parameters.
    #[error("{0}")]
    Params(String),
    /// ffmpeg could not be run.
    #[error("running ffmpeg: {0}")]
    Spawn(#[from] std::io::Error),
    /// ffmpeg failed.
    #[error("ffmpeg failed: {0}")]
    Ffmpeg(String),
    /// The file is not what was asked for.
    #[error("{path}: {what}")]
    Check {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
}

/// One real video.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RealVideo {
    /// Multiplex (TS) bitrate, kbit/s.
    pub mux_kbps: u64,
    /// Duration.
    pub duration: Duration,
    /// Picture width and height.
    pub size: (u32, u32),
    /// Frames per second.
    pub fps: u32,
    /// Keyframe interval.
    pub gop: Duration,
    /// x264 preset (speed of encoding).
    pub preset: String,
}

/// What [`RealVideo::make`] produced, read back from the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Made {
    /// The file.
    pub path: PathBuf,
    /// Bytes.
    pub bytes: u64,
    /// PCR rate of the file.
    pub bitrate_bps: u64,
    /// Media duration.
    pub duration_ms: u64,
    /// HLS segments at the default target.
    pub segments: usize,
}

impl RealVideo {
    /// A video at `mux_kbps` lasting `duration`, with a picture size that suits the rate.
    pub fn new(mux_kbps: u64, duration: Duration) -> Self {
        let size = match mux_kbps {
            0..600 => (426, 240),
            600..2500 => (640, 360),
            _ => (1280, 720),
        };
        Self {
            mux_kbps,
            duration,
            size,
            fps: 25,
            gop: Duration::from_secs(2),
            preset: "veryfast".into(),
        }
    }

    /// Audio rate: 96 kbit/s, 48 below 600 kbit/s.
    fn audio_kbps(&self) -> u64 {
        if self.mux_kbps < 600 { 48 } else { 96 }
    }

    /// Video rate: what is left of 80 % of the multiplex after audio (the rest is TS and
    /// PES overhead, tables and padding).
    fn video_kbps(&self) -> u64 {
        (self.mux_kbps * 8 / 10).saturating_sub(self.audio_kbps())
    }

    fn check(&self) -> Result<(), RealVideoError> {
        if self.mux_kbps < MIN_KBPS || self.mux_kbps > 100_000 {
            return Err(RealVideoError::Params(format!(
                "bitrate {} kbit/s: real videos need {MIN_KBPS}..=100000",
                self.mux_kbps
            )));
        }
        if self.duration.is_zero() || self.duration > Duration::from_secs(6 * 3600) {
            return Err(RealVideoError::Params("duration must be 1 s to 6 h".into()));
        }
        if self.fps == 0 || self.fps > 120 || self.size.0 < 16 || self.size.1 < 16 {
            return Err(RealVideoError::Params(
                "bad picture size or frame rate".into(),
            ));
        }
        Ok(())
    }

    /// The ffmpeg command line (after the program name) that writes the video as GOP-long
    /// files `s000000.ts`, ... listed in `index.m3u8` in `work`.
    pub fn ffmpeg_args(&self, work: &Path) -> Vec<String> {
        let (w, h) = self.size;
        let v = self.video_kbps();
        let gop = ((self.gop.as_millis() as u64 * self.fps as u64) / 1000).max(1);
        let mut a: Vec<String> = [
            "-hide_banner",
            "-nostdin",
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
        ]
        .map(String::from)
        .to_vec();
        a.push(format!("testsrc2=size={w}x{h}:rate={}", self.fps));
        a.extend(["-f", "lavfi", "-i"].map(String::from));
        a.push("sine=frequency=440:beep_factor=4:sample_rate=48000".into());
        a.extend(["-t".into(), format!("{:.3}", self.duration.as_secs_f64())]);
        a.extend(["-map", "0:v", "-map", "1:a", "-c:v", "libx264", "-preset"].map(String::from));
        a.push(self.preset.clone());
        a.extend(["-profile:v", "main", "-pix_fmt", "yuv420p"].map(String::from));
        for flag in ["-b:v", "-minrate", "-maxrate", "-bufsize"] {
            a.extend([flag.to_string(), format!("{v}k")]);
        }
        a.extend(["-x264-params".into(), "nal-hrd=cbr:force-cfr=1".into()]);
        a.extend([
            "-g".into(),
            gop.to_string(),
            "-keyint_min".into(),
            gop.to_string(),
        ]);
        a.extend(["-sc_threshold", "0", "-c:a", "aac", "-ac", "2", "-b:a"].map(String::from));
        a.push(format!("{}k", self.audio_kbps()));
        a.extend(["-f", "hls", "-hls_list_size", "0", "-hls_time"].map(String::from));
        a.push(format!("{:.3}", self.gop.as_secs_f64()));
        a.push("-hls_segment_options".into());
        a.push(format!("muxrate={}k", self.mux_kbps));
        a.push("-hls_segment_filename".into());
        a.push(work.join("s%06d.ts").display().to_string());
        a.push(work.join("index.m3u8").display().to_string());
        a
    }

    /// Encodes the video to `out` with the ffmpeg at `ffmpeg`, then reads it back and checks
    /// its bitrate (within 3 % of the multiplex rate), duration (within 0.2 s) and keyframes.
    pub fn make(&self, ffmpeg: &Path, out: &Path) -> Result<Made, RealVideoError> {
        self.check()?;
        let parent = out.parent().filter(|p| !p.as_os_str().is_empty());
        let work = tempfile::tempdir_in(parent.unwrap_or(Path::new(".")))?;
        let o = std::process::Command::new(ffmpeg)
            .args(self.ffmpeg_args(work.path()))
            .output()?;
        let err = String::from_utf8_lossy(&o.stderr);
        if !o.status.success() || !err.trim().is_empty() {
            return Err(RealVideoError::Ffmpeg(err.trim().to_string()));
        }
        let bad = |what: String| RealVideoError::Check {
            path: out.to_path_buf(),
            what,
        };
        let list = std::fs::read_to_string(work.path().join("index.m3u8"))?;
        let list =
            MediaPlaylist::parse(&list).map_err(|e| bad(format!("ffmpeg's playlist: {e}")))?;
        let mut data = Vec::new();
        for (_, file) in &list.segments {
            if file.contains('/') {
                return Err(bad(format!("unexpected segment {file:?}")));
            }
            data.extend_from_slice(&std::fs::read(work.path().join(file))?);
        }
        std::fs::write(out, &data)?;
        let t = scan::scan(&data);
        let bitrate_bps = t.bitrate_bps().ok_or_else(|| bad("no PCR".into()))?;
        let want = self.mux_kbps * 1000;
        if bitrate_bps.abs_diff(want) * 100 > want * 3 {
            return Err(bad(format!("PCR rate {bitrate_bps} bit/s, asked {want}")));
        }
        let duration_ms = t.duration_ms().ok_or_else(|| bad("no timestamps".into()))?;
        if duration_ms.abs_diff(self.duration.as_millis() as u64) > 200 {
            return Err(bad(format!(
                "{duration_ms} ms long, asked {:?}",
                self.duration
            )));
        }
        if !t.keyframes() {
            return Err(bad("no keyframes found".into()));
        }
        if t.points.iter().any(|p| p.key && !p.clean) {
            return Err(bad("a keyframe falls inside another stream's PES".into()));
        }
        let ix = SegmentIndex::from_timing(&t, data.len() as u64, DEFAULT_TARGET)
            .ok_or_else(|| bad("cannot be cut into segments".into()))?;
        Ok(Made {
            path: out.to_path_buf(),
            bytes: data.len() as u64,
            bitrate_bps,
            duration_ms,
            segments: ix.len(),
        })
    }
}

/// `count` videos named `v1.ts`, `v2.ts`, ... lasting `duration`, with bitrates taken in
/// turn from `kbps`.
pub fn catalogue(count: usize, duration: Duration, kbps: &[u64]) -> Vec<(String, RealVideo)> {
    let kbps = if kbps.is_empty() { &[800][..] } else { kbps };
    (0..count)
        .map(|i| {
            (
                format!("v{}.ts", i + 1),
                RealVideo::new(kbps[i % kbps.len()], duration),
            )
        })
        .collect()
}

/// What `{name}.json` beside a made video records, so that an unchanged video is not made
/// again.
#[derive(Debug, Serialize, Deserialize)]
struct Stamp {
    params: RealVideo,
    made: Made,
}

/// Makes every video of `videos` in `dir` (created if needed), skipping files that exist
/// with the right parameters already (a `{name}.json` beside each records them).
pub fn make_catalogue(
    ffmpeg: &Path,
    dir: &Path,
    videos: &[(String, RealVideo)],
) -> Result<Vec<Made>, RealVideoError> {
    std::fs::create_dir_all(dir)?;
    let mut out = Vec::new();
    for (name, v) in videos {
        if name.contains('/') || name.starts_with('.') {
            return Err(RealVideoError::Params(format!("bad video name {name:?}")));
        }
        let path = dir.join(name);
        let stamp_path = dir.join(format!("{name}.json"));
        let stamp: Option<Stamp> = std::fs::read_to_string(&stamp_path)
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok());
        if let Some(st) = stamp.filter(|st| {
            st.params == *v && std::fs::metadata(&path).is_ok_and(|m| m.len() == st.made.bytes)
        }) {
            out.push(Made { path, ..st.made });
            continue;
        }
        let made = v.make(ffmpeg, &path)?;
        let st = Stamp {
            params: v.clone(),
            made: made.clone(),
        };
        std::fs::write(&stamp_path, serde_json::to_string(&st).unwrap_or_default())?;
        out.push(made);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_asks_for_cbr_and_fixed_keyframes() {
        let v = RealVideo::new(800, Duration::from_secs(30));
        let a = v.ffmpeg_args(Path::new("/tmp/work"));
        let after = |flag: &str| {
            let i = a.iter().position(|x| x == flag).unwrap();
            a[i + 1].clone()
        };
        assert_eq!(after("-b:v"), after("-maxrate"));
        assert_eq!(after("-b:v"), after("-minrate"));
        assert_eq!(after("-g"), "50");
        assert_eq!(after("-keyint_min"), "50");
        assert_eq!(after("-sc_threshold"), "0");
        assert!(after("-x264-params").contains("nal-hrd=cbr"));
        assert_eq!(after("-t"), "30.000");
        assert_eq!(after("-hls_time"), "2.000", "one file per GOP");
        assert_eq!(after("-hls_segment_options"), "muxrate=800k");
        assert_eq!(a.last().unwrap(), "/tmp/work/index.m3u8");
        // Video + audio leave room for the TS overhead.
        assert!(v.video_kbps() + v.audio_kbps() < v.mux_kbps * 85 / 100);
    }

    #[test]
    fn bad_parameters_are_refused_before_running_anything() {
        let nowhere = Path::new("/nonexistent/ffmpeg");
        let out = Path::new("/nonexistent/x.ts");
        for v in [
            RealVideo::new(100, Duration::from_secs(10)),
            RealVideo::new(800, Duration::ZERO),
        ] {
            assert!(matches!(
                v.make(nowhere, out),
                Err(RealVideoError::Params(_))
            ));
        }
    }

    #[test]
    fn catalogue_cycles_bitrates() {
        let c = catalogue(4, Duration::from_secs(60), &[400, 1500]);
        let names: Vec<&str> = c.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["v1.ts", "v2.ts", "v3.ts", "v4.ts"]);
        let k: Vec<u64> = c.iter().map(|(_, v)| v.mux_kbps).collect();
        assert_eq!(k, [400, 1500, 400, 1500]);
    }
}
