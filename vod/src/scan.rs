//! Reads the timing of an MPEG-TS file: its program tables, the PES timestamps of one
//! elementary stream (the video if there is one, else the first audio), where the keyframes
//! are, and the PCR span. The origin uses it once per video to state the real duration and
//! bitrate of files made elsewhere (ffmpeg) and to cut them into HLS segments ([`crate::hls`]).
//!
//! The scan is a single pass over 188-byte packet headers plus the first bytes of each PES
//! of the timing stream: no demuxing, no copies. It trusts nothing: a packet without its sync
//! byte is counted and skipped, short or inconsistent tables and PES headers are ignored, and
//! every offset it reports lies on a packet boundary inside the file.
//!
//! ## Layout
//! - [`parse_timestamp`]: the 5-byte PES timestamp (the inverse of the generator's encoder).
//! - [`scan`] → [`Timing`]: streams, access points ([`Point`]), PCR span, media duration.
//! - helpers: PAT/PMT sections, PES headers, keyframe detection (random-access indicator,
//!   H.264/HEVC NAL unit types).

use crate::ts::{PACKET, PID_NULL};

/// Timestamps are 33-bit counts of a 90 kHz clock.
pub const PTS_MODULO: u64 = 1 << 33;
/// Ticks per second of PES timestamps.
pub const PTS_HZ: u64 = 90_000;

/// One elementary stream of the program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stream {
    /// Its PID.
    pub pid: u16,
    /// The PMT's `stream_type` (0x1B H.264, 0x24 HEVC, 0x0F AAC, 0x03/0x04 MPEG audio, ...).
    pub stream_type: u8,
}

impl Stream {
    /// True for the video stream types this scanner knows.
    pub fn is_video(&self) -> bool {
        matches!(self.stream_type, 0x01 | 0x02 | 0x10 | 0x1B | 0x24)
    }

    /// True for the audio stream types this scanner knows.
    pub fn is_audio(&self) -> bool {
        matches!(self.stream_type, 0x03 | 0x04 | 0x0F | 0x11 | 0x81 | 0x87)
    }
}

/// The start of one PES of the timing stream: where a segment could begin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Point {
    /// Byte offset a segment starting here would start at: the packet that begins the PES,
    /// moved back over the tables (PAT/PMT/SDT) and stuffing just before it, so that a
    /// segment cut here carries the tables a player needs to start decoding.
    pub offset: u64,
    /// Presentation timestamp, 90 kHz, unwrapped (monotonic across the 33-bit wrap).
    pub pts: u64,
    /// A keyframe (random access point) starts here.
    pub key: bool,
    /// Every other elementary stream also starts a new PES at this cut, so a player that
    /// demuxes each segment on its own (hls.js) loses nothing of any stream here. A cut in
    /// the middle of another stream's PES (ffmpeg packs about half a second of audio into
    /// one) drops that PES's samples at such a player.
    pub clean: bool,
}

/// What [`scan`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Timing {
    /// Elementary streams of the first program, as listed in its PMT.
    pub streams: Vec<Stream>,
    /// The stream whose timestamps were read: the first video, else the first audio, else
    /// the first stream.
    pub timing: Option<Stream>,
    /// Every PES start of the timing stream that carries a PTS, in file order.
    pub points: Vec<Point>,
    /// End of the last access unit: the highest PTS plus one typical frame duration.
    pub end_pts: Option<u64>,
    /// `(packet index, PCR in 27 MHz ticks)` of the first and last PCR of the PCR PID.
    pub pcr_span: Option<((u64, u64), (u64, u64))>,
    /// Packets without the sync byte (skipped).
    pub bad_packets: u64,
}

impl Timing {
    /// True when the timing stream is video whose keyframes were found.
    pub fn keyframes(&self) -> bool {
        self.timing.is_some_and(|s| s.is_video()) && self.points.iter().any(|p| p.key)
    }

    /// Media duration in 90 kHz ticks: from the first PTS to the end of the last frame.
    pub fn duration_90k(&self) -> Option<u64> {
        let first = self.points.iter().map(|p| p.pts).min()?;
        self.end_pts?.checked_sub(first).filter(|d| *d > 0)
    }

    /// Media duration in milliseconds.
    pub fn duration_ms(&self) -> Option<u64> {
        self.duration_90k().map(|d| d * 1000 / PTS_HZ)
    }

    /// Multiplex bitrate from the PCR span (bits between the first and last PCR over the
    /// time between them): the rate a CBR file must be streamed at.
    pub fn bitrate_bps(&self) -> Option<u64> {
        let ((i0, p0), (i1, p1)) = self.pcr_span?;
        let dpcr = p1.checked_sub(p0).filter(|d| *d > 0)?;
        let bits = (i1.checked_sub(i0)? * PACKET as u64 * 8) as u128;
        Some((bits * 27_000_000 / dpcr as u128) as u64).filter(|b| *b > 0)
    }
}

/// Reads a 5-byte PES timestamp (PTS or DTS). None when its marker bits are wrong, which is
/// how a corrupt or misaligned header shows.
pub fn parse_timestamp(b: &[u8]) -> Option<u64> {
    if b.len() < 5 || b[0] & 1 != 1 || b[2] & 1 != 1 || b[4] & 1 != 1 {
        return None;
    }
    Some(
        (((b[0] >> 1) & 0x07) as u64) << 30
            | (b[1] as u64) << 22
            | ((b[2] >> 1) as u64) << 15
            | (b[3] as u64) << 7
            | (b[4] >> 1) as u64,
    )
}

/// A parsed packet header: PID, payload start, adaptation flags.
struct Packet<'a> {
    pid: u16,
    pusi: bool,
    random_access: bool,
    pcr: Option<u64>,
    payload: &'a [u8],
}

fn parse_packet(p: &[u8]) -> Option<Packet<'_>> {
    if p.len() < PACKET || p[0] != 0x47 {
        return None;
    }
    let pid = (((p[1] & 0x1F) as u16) << 8) | p[2] as u16;
    let pusi = p[1] & 0x40 != 0;
    let afc = (p[3] >> 4) & 0x03;
    let mut start = 4;
    let (mut random_access, mut pcr) = (false, None);
    if afc & 0x02 != 0 {
        let len = p[4] as usize;
        if len > 183 {
            return None;
        }
        if len > 0 {
            let flags = p[5];
            random_access = flags & 0x40 != 0;
            if flags & 0x10 != 0 && len >= 7 {
                let base = ((p[6] as u64) << 25)
                    | ((p[7] as u64) << 17)
                    | ((p[8] as u64) << 9)
                    | ((p[9] as u64) << 1)
                    | ((p[10] as u64) >> 7);
                let ext = (((p[10] & 1) as u64) << 8) | p[11] as u64;
                pcr = Some(base * 300 + ext);
            }
        }
        start = 5 + len;
    }
    let payload = if afc & 0x01 != 0 {
        &p[start.min(PACKET)..PACKET]
    } else {
        &[]
    };
    Some(Packet {
        pid,
        pusi,
        random_access,
        pcr,
        payload,
    })
}

/// The section a PSI packet starts (after its pointer field), bounded by `section_length`.
fn section(payload: &[u8]) -> Option<&[u8]> {
    let ptr = *payload.first()? as usize;
    let s = payload.get(1 + ptr..)?;
    let len = ((*s.get(1)? as usize & 0x0F) << 8) | *s.get(2)? as usize;
    s.get(..3 + len)
}

/// The PMT PID of the first program of a PAT section.
fn pat_pmt_pid(payload: &[u8]) -> Option<u16> {
    let s = section(payload)?;
    if s[0] != 0x00 || s.len() < 12 {
        return None;
    }
    // Program loop from byte 8 to the CRC; program 0 is the network PID.
    s[8..s.len() - 4].chunks_exact(4).find_map(|e| {
        let program = u16::from_be_bytes([e[0], e[1]]);
        (program != 0).then_some((((e[2] & 0x1F) as u16) << 8) | e[3] as u16)
    })
}

/// `(PCR PID, streams)` of a PMT section.
fn pmt_streams(payload: &[u8]) -> Option<(u16, Vec<Stream>)> {
    let s = section(payload)?;
    if s[0] != 0x02 || s.len() < 16 {
        return None;
    }
    let pcr_pid = (((s[8] & 0x1F) as u16) << 8) | s[9] as u16;
    let info_len = (((s[10] & 0x0F) as usize) << 8) | s[11] as usize;
    let mut i = 12 + info_len;
    let end = s.len() - 4;
    let mut streams = Vec::new();
    while i + 5 <= end {
        let stream_type = s[i];
        let pid = (((s[i + 1] & 0x1F) as u16) << 8) | s[i + 2] as u16;
        let es_len = (((s[i + 3] & 0x0F) as usize) << 8) | s[i + 4] as usize;
        streams.push(Stream { pid, stream_type });
        i += 5 + es_len;
    }
    Some((pcr_pid, streams))
}

/// `(PTS, rest of the payload after the PES header)` of a PES starting in `payload`.
fn pes_pts(payload: &[u8]) -> Option<(u64, &[u8])> {
    if payload.len() < 9 || payload[..3] != [0, 0, 1] {
        return None;
    }
    // Stream ids without the optional header (padding, private_stream_2, ...) carry no PTS.
    if matches!(
        payload[3],
        0xBC | 0xBE | 0xBF | 0xF0 | 0xF1 | 0xF2 | 0xF8 | 0xFF
    ) {
        return None;
    }
    if payload[6] & 0xC0 != 0x80 || payload[7] & 0x80 == 0 {
        return None;
    }
    let header_len = payload[8] as usize;
    let pts = parse_timestamp(payload.get(9..14)?)?;
    Some((pts, payload.get(9 + header_len..).unwrap_or(&[])))
}

/// True if the start of a video access unit (the first packet's payload after the PES
/// header) shows a random access point: an H.264 IDR slice or SPS, an HEVC IRAP or VPS/SPS,
/// an MPEG-1/2 sequence header. Encoders put the parameter sets right before keyframes.
fn starts_keyframe(stream_type: u8, es: &[u8]) -> bool {
    let mut i = 0;
    while i + 3 < es.len() {
        if es[i] == 0 && es[i + 1] == 0 && es[i + 2] == 1 {
            let b = es[i + 3];
            let key = match stream_type {
                0x1B => matches!(b & 0x1F, 5 | 7),
                0x24 => matches!((b >> 1) & 0x3F, 16..=21 | 32 | 33),
                0x01 | 0x02 => b == 0xB3,
                _ => false,
            };
            if key {
                return true;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    false
}

/// How many packets a point waits for the other streams to show whether it is clean.
const PENDING_PACKETS: usize = 100_000;

/// Packets that may lead a segment: tables, stuffing and payload-less (PCR-only) packets.
fn is_lead_in(pid: u16, pmt_pid: Option<u16>, has_payload: bool) -> bool {
    pid == 0x0000 || pid == 0x0011 || pid == PID_NULL || Some(pid) == pmt_pid || !has_payload
}

/// Scans a whole TS file (see the module docs).
pub fn scan(data: &[u8]) -> Timing {
    let mut t = Timing::default();
    let mut pmt_pid: Option<u16> = None;
    let mut pcr_pid: Option<u16> = None;
    // Start of the current run of lead-in packets, and whether it holds a PAT.
    let mut run_start: Option<u64> = None;
    let mut run_has_pat = false;
    let (mut last_raw, mut wraps) = (None::<u64>, 0u64);
    // Points whose cleanness is not known yet: (point index, packet index, streams not seen
    // since the cut).
    let mut pending: Vec<(usize, usize, Vec<u16>)> = Vec::new();
    let packets = data.len() / PACKET;
    for i in 0..packets {
        let off = (i * PACKET) as u64;
        let Some(p) = parse_packet(&data[i * PACKET..(i + 1) * PACKET]) else {
            t.bad_packets += 1;
            run_start = None;
            run_has_pat = false;
            continue;
        };
        if p.pid == 0 && p.pusi {
            if let Some(pid) = pat_pmt_pid(p.payload) {
                pmt_pid = Some(pid);
            }
        } else if Some(p.pid) == pmt_pid
            && p.pusi
            && t.streams.is_empty()
            && let Some((pcr, streams)) = pmt_streams(p.payload)
        {
            pcr_pid = Some(pcr);
            t.timing = streams
                .iter()
                .find(|s| s.is_video())
                .or_else(|| streams.iter().find(|s| s.is_audio()))
                .or_else(|| streams.first())
                .copied();
            t.streams = streams;
        }
        if let Some(pcr) = p.pcr.filter(|_| Some(p.pid) == pcr_pid) {
            let at = (i as u64, pcr);
            t.pcr_span = Some(match t.pcr_span {
                None => (at, at),
                Some((first, _)) => (first, at),
            });
        }
        if !p.payload.is_empty() && !pending.is_empty() {
            for (point, _, unseen) in pending.iter_mut() {
                if let Some(k) = unseen.iter().position(|&u| u == p.pid) {
                    unseen.swap_remove(k);
                    if !p.pusi {
                        t.points[*point].clean = false;
                    }
                }
            }
            // A stream that stops for good must not keep points pending forever.
            pending.retain(|(_, at, unseen)| !unseen.is_empty() && i - at < PENDING_PACKETS);
        }
        if let Some(ts) = t.timing.filter(|s| s.pid == p.pid && p.pusi)
            && let Some((raw, es)) = pes_pts(p.payload)
        {
            // Unwrap the 33-bit clock: a jump back by more than half its range is a wrap.
            if let Some(prev) = last_raw {
                if raw + PTS_MODULO / 2 < prev {
                    wraps += 1;
                } else if prev + PTS_MODULO / 2 < raw && wraps > 0 {
                    wraps -= 1;
                }
            }
            last_raw = Some(raw);
            let key = ts.is_video() && (p.random_access || starts_keyframe(ts.stream_type, es));
            let offset = match run_start {
                Some(s) if run_has_pat => s,
                _ => off,
            };
            let others: Vec<u16> = t
                .streams
                .iter()
                .map(|s| s.pid)
                .filter(|&pid| pid != ts.pid)
                .collect();
            if !others.is_empty() {
                pending.push((t.points.len(), i, others));
            }
            t.points.push(Point {
                offset,
                pts: raw + wraps * PTS_MODULO,
                key,
                clean: true,
            });
        }
        if is_lead_in(p.pid, pmt_pid, !p.payload.is_empty()) {
            if run_start.is_none() {
                run_start = Some(off);
            }
            run_has_pat |= p.pid == 0;
        } else {
            run_start = None;
            run_has_pat = false;
        }
    }
    t.end_pts = end_pts(&t.points);
    t
}

/// Highest PTS plus the median spacing of the sorted timestamps (one frame): where the last
/// access unit ends. Sorting makes it right for video with B-frames too.
fn end_pts(points: &[Point]) -> Option<u64> {
    let mut pts: Vec<u64> = points.iter().map(|p| p.pts).collect();
    pts.sort_unstable();
    pts.dedup();
    let last = *pts.last()?;
    let mut gaps: Vec<u64> = pts.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort_unstable();
    Some(last + gaps.get(gaps.len() / 2).copied().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ts::{self, VideoParams, encode_timestamp, generate};
    use proptest::prelude::*;
    use std::time::Duration;

    proptest! {
        #[test]
        fn timestamp_round_trip(ts in 0u64..PTS_MODULO, prefix in 0u8..16) {
            let b = encode_timestamp(prefix, ts);
            prop_assert_eq!(parse_timestamp(&b), Some(ts));
            prop_assert_eq!(b[0] >> 4, prefix);
        }

        #[test]
        fn scan_never_panics_and_offsets_stay_inside(data in proptest::collection::vec(any::<u8>(), 0..4000), sync in any::<bool>()) {
            let mut data = data;
            if sync {
                for c in data.chunks_mut(PACKET) { c[0] = 0x47; }
            }
            let t = scan(&data);
            for p in &t.points {
                prop_assert!(p.offset < data.len() as u64);
                prop_assert_eq!(p.offset % PACKET as u64, 0);
            }
        }
    }

    #[test]
    fn marker_bits_are_checked() {
        let mut b = encode_timestamp(2, 12345);
        b[4] &= 0xFE;
        assert_eq!(parse_timestamp(&b), None);
        assert_eq!(parse_timestamp(&b[..4]), None);
    }

    #[test]
    fn generated_video_timing_matches_its_parameters() {
        let params = VideoParams {
            bitrate_bps: 400_000,
            duration_ms: 10_000,
        };
        let data = generate(params).unwrap();
        let t = scan(&data);
        assert_eq!(t.bad_packets, 0);
        let timing = t.timing.expect("an audio stream");
        assert!(timing.is_audio() && !timing.is_video());
        assert!(!t.keyframes(), "audio has no keyframes");
        // One PES per 24 ms frame, PTS advancing by exactly one frame.
        let frames = params.duration_ms.div_ceil(24);
        assert!(
            t.points.len() as u64 >= frames - 1,
            "{} points",
            t.points.len()
        );
        for w in t.points.windows(2) {
            assert_eq!(w[1].pts - w[0].pts, 24 * 90);
            assert!(w[1].offset > w[0].offset);
        }
        let d = t.duration_ms().unwrap();
        assert!(d.abs_diff(params.duration_ms) <= 48, "duration {d}");
        let b = t.bitrate_bps().unwrap();
        assert!(
            b.abs_diff(params.bitrate_bps) * 100 < params.bitrate_bps,
            "{b}"
        );
    }

    /// A small TS with one H.264 stream (PAT+PMT before every keyframe, like ffmpeg writes)
    /// and, with `audio_every`, an audio PES of two packets starting before every
    /// `audio_every`-th video frame and ending after it.
    fn h264_stream(frames: u64, gop: u64, start_pts: u64, audio_every: Option<u64>) -> Vec<u8> {
        let mut out = Vec::new();
        let pat = ts::pat_section();
        let pmt = ts::pmt_section_with(0x100, &[(0x1B, 0x100), (0x0F, 0x101)]);
        let (mut cc_v, mut cc_a, mut cc_t) = (0u8, 0u8, 0u8);
        let mut audio_tail = false;
        for f in 0..frames {
            let key = f % gop == 0;
            let audio_start = audio_every.is_some_and(|n| f % n == 0);
            if audio_start {
                let mut pes = vec![0, 0, 1, 0xC0, 0, 0, 0x80, 0x80, 5];
                pes.extend_from_slice(&encode_timestamp(2, start_pts + f * 3600));
                pes.resize(184, 0x11);
                ts::packet(&mut out, 0x101, true, cc_a, None, &pes);
                cc_a = (cc_a + 1) & 0xF;
                audio_tail = true;
            }
            if key {
                ts::psi_packet(&mut out, 0, cc_t, &pat);
                ts::psi_packet(&mut out, 0x1000, cc_t, &pmt);
                cc_t = (cc_t + 1) & 0xF;
            }
            let pts = (start_pts + f * 3600) % PTS_MODULO;
            let mut pes = vec![0, 0, 1, 0xE0, 0, 0, 0x80, 0x80, 5];
            pes.extend_from_slice(&encode_timestamp(2, pts));
            // Access unit delimiter, then an IDR or a non-IDR slice.
            pes.extend_from_slice(&[0, 0, 0, 1, 0x09, 0xF0]);
            pes.extend_from_slice(&[0, 0, 0, 1, if key { 0x65 } else { 0x41 }]);
            pes.resize(400, 0xAB);
            for (j, chunk) in pes.chunks(184).enumerate() {
                ts::packet(&mut out, 0x100, j == 0, cc_v, None, chunk);
                cc_v = (cc_v + 1) & 0xF;
            }
            if audio_tail {
                // The rest of the audio PES comes after the video frame.
                ts::packet(&mut out, 0x101, false, cc_a, None, &[0x22; 184]);
                cc_a = (cc_a + 1) & 0xF;
                audio_tail = false;
            }
        }
        out
    }

    #[test]
    fn cuts_inside_another_streams_pes_are_not_clean() {
        // Audio PES straddle every 5th video frame; keyframes every 10th frame sit inside
        // an audio PES at frames 0, 10, 20; keyframes at 25 and 35 are clean (no audio there).
        let data = h264_stream(40, 5, 0, Some(10));
        let t = scan(&data);
        let keys: Vec<(u64, bool)> = t
            .points
            .iter()
            .filter(|p| p.key)
            .map(|p| (p.pts / 3600, p.clean))
            .collect();
        assert_eq!(
            keys,
            vec![
                (0, false),
                (5, true),
                (10, false),
                (15, true),
                (20, false),
                (25, true),
                (30, false),
                (35, true)
            ]
        );
        // The segmenter uses the clean ones only.
        let ix = crate::hls::SegmentIndex::from_timing(
            &t,
            data.len() as u64,
            Duration::from_millis(400),
        )
        .unwrap();
        let starts: Vec<u64> = ix.segments.iter().map(|s| s.start_90k / 3600).collect();
        assert_eq!(
            starts,
            vec![0, 15, 25, 35],
            "clean keyframes at least 0.9 x 400 ms apart"
        );
        assert_eq!(
            ix.segments[0].duration_90k,
            15 * 3600,
            "from the first frame"
        );
    }

    #[test]
    fn h264_keyframes_are_found_with_their_tables() {
        let data = h264_stream(100, 25, 126_000, None);
        let t = scan(&data);
        assert!(t.keyframes());
        let keys: Vec<&Point> = t.points.iter().filter(|p| p.key).collect();
        assert_eq!(keys.len(), 4);
        for k in &keys {
            // The cut includes the PAT right before the keyframe.
            let pid = (((data[k.offset as usize + 1] & 0x1F) as u16) << 8)
                | data[k.offset as usize + 2] as u16;
            assert_eq!(pid, 0, "segment would start with the PAT");
        }
        assert_eq!(keys[1].pts - keys[0].pts, 25 * 3600);
        assert_eq!(t.duration_90k(), Some(100 * 3600));
    }

    #[test]
    fn pts_wrap_is_unwrapped() {
        let data = h264_stream(50, 25, PTS_MODULO - 20 * 3600, None);
        let t = scan(&data);
        for w in t.points.windows(2) {
            assert_eq!(w[1].pts, w[0].pts + 3600, "monotonic across the wrap");
        }
        assert_eq!(t.duration_90k(), Some(50 * 3600));
    }
}
