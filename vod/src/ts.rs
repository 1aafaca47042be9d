//! MPEG-TS: a built-in generator of valid constant-bitrate transport streams, a stream
//! integrity checker (sync bytes and continuity counters) and a PCR-based bitrate estimator.
//!
//! The generated stream carries one program: PAT (PID 0), PMT (PID 0x1000) and one MPEG-1
//! Layer II audio elementary stream (PID 0x100, silent frames at 48 kHz) that also carries the
//! PCR. Null packets (PID 0x1FFF) pad the multiplex to the exact requested bitrate, which is how
//! broadcast CBR streams are built. Real decoders (ffmpeg) decode it without errors, and tests
//! need no external tool. A silent audio track rather than video keeps the generator small: the
//! distributor never looks inside the payload, it only needs real TS bytes at a real bitrate.
//!
//! ## Layout
//! - [`VideoParams`], [`generate`]: the multiplexer (slot scheduler over packet times).
//! - [`TsChecker`]: incremental integrity check used by viewers, resumable at any byte.
//! - [`estimate_bitrate`]: bitrate from the first and last PCR, for files made elsewhere.

/// Size of one transport stream packet.
pub const PACKET: usize = 188;
const PID_PAT: u16 = 0x0000;
const PID_PMT: u16 = 0x1000;
const PID_AUDIO: u16 = 0x0100;
/// PID of null (stuffing) packets; their continuity counter is undefined.
pub const PID_NULL: u16 = 0x1FFF;
/// Audio frames of 1152 samples at 48 kHz last 24 ms.
const FRAME_MS: u64 = 24;
/// PAT/PMT are repeated this often so a player can join (or resume) anywhere.
const PSI_INTERVAL_MS: u64 = 200;
/// PTS runs this far ahead of the PCR (decoder buffer delay).
const PTS_DELAY_90K: u64 = 45_000;

/// Parameters of a generated video.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoParams {
    /// Constant multiplex bitrate in bits per second.
    pub bitrate_bps: u64,
    /// Duration in milliseconds.
    pub duration_ms: u64,
}

/// Why a video cannot be generated.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TsError {
    /// The multiplex must be able to carry the smallest audio stream plus tables.
    #[error("bitrate {0} bps is below the minimum of 64000 bps")]
    BitrateTooLow(u64),
    /// Keeps a typo from asking for terabytes of memory.
    #[error("video of {0} bytes is larger than the 4 GiB limit")]
    TooLarge(u64),
}

impl VideoParams {
    /// Number of 188-byte packets in the file.
    pub fn packets(&self) -> u64 {
        (self.duration_ms as u128 * self.bitrate_bps as u128).div_ceil(1000 * 8 * PACKET as u128)
            as u64
    }

    /// File size in bytes.
    pub fn size(&self) -> u64 {
        self.packets() * PACKET as u64
    }
}

/// MPEG-1 Layer II bitrates (kbit/s) by bitrate index.
const MP2_KBPS: [u64; 15] = [
    0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384,
];

/// TS packets one audio frame of `kbps` occupies (first packet carries an 8-byte PCR field).
fn packets_per_frame(kbps: u64) -> u64 {
    let pes = 14 + 3 * kbps; // PES header with PTS + frame (144 * kbps / 48 bytes)
    1 + pes.saturating_sub(176).div_ceil(184)
}

/// Largest audio bitrate index whose multiplex fits in 90 % of `bitrate_bps`.
fn pick_audio(bitrate_bps: u64) -> Option<usize> {
    let psi_bps = 2 * PACKET as u64 * 8 * 1000 / PSI_INTERVAL_MS;
    (1..MP2_KBPS.len()).rev().find(|&i| {
        let ts_bps = packets_per_frame(MP2_KBPS[i]) * PACKET as u64 * 8 * 1000 / FRAME_MS;
        (ts_bps + psi_bps) * 10 <= bitrate_bps * 9
    })
}

/// CRC-32/MPEG-2 used by PSI sections.
fn crc32_mpeg(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= (b as u32) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04C1_1DB7
            } else {
                crc << 1
            };
        }
    }
    crc
}

fn with_crc(mut section: Vec<u8>) -> Vec<u8> {
    let crc = crc32_mpeg(&section);
    section.extend_from_slice(&crc.to_be_bytes());
    section
}

pub(crate) fn pat_section() -> Vec<u8> {
    with_crc(vec![
        0x00,
        0xB0,
        0x0D,
        0x00,
        0x01,
        0xC1,
        0x00,
        0x00,
        0x00,
        0x01,
        0xE0 | (PID_PMT >> 8) as u8,
        PID_PMT as u8,
    ])
}

fn pmt_section() -> Vec<u8> {
    pmt_section_for(PID_AUDIO, 0x03)
}

/// A PMT for program 1 with one elementary stream `pid` of `stream_type`, which also
/// carries the PCR.
pub(crate) fn pmt_section_for(pid: u16, stream_type: u8) -> Vec<u8> {
    pmt_section_with(pid, &[(stream_type, pid)])
}

/// A PMT for program 1 with the PCR on `pcr_pid` and `(stream_type, pid)` streams.
pub(crate) fn pmt_section_with(pcr_pid: u16, streams: &[(u8, u16)]) -> Vec<u8> {
    let len = 13 + 5 * streams.len();
    let mut s = vec![
        0x02,
        0xB0 | (len >> 8) as u8,
        len as u8,
        0x00,
        0x01,
        0xC1,
        0x00,
        0x00,
        0xE0 | (pcr_pid >> 8) as u8,
        pcr_pid as u8,
        0xF0,
        0x00, // program_info_length 0
    ];
    for &(stream_type, pid) in streams {
        s.extend_from_slice(&[stream_type, 0xE0 | (pid >> 8) as u8, pid as u8, 0xF0, 0x00]);
    }
    with_crc(s)
}

/// Builds one packet: header, optional adaptation field (PCR and/or stuffing), payload.
pub(crate) fn packet(
    out: &mut Vec<u8>,
    pid: u16,
    pusi: bool,
    cc: u8,
    pcr27: Option<u64>,
    payload: &[u8],
) {
    debug_assert!(payload.len() <= 184);
    let start = out.len();
    out.push(0x47);
    out.push(((pusi as u8) << 6) | (pid >> 8) as u8);
    out.push(pid as u8);
    let needs_af = pcr27.is_some() || payload.len() < 184;
    out.push(if needs_af { 0x30 } else { 0x10 } | (cc & 0x0F));
    if needs_af {
        let af_len = 183 - payload.len();
        out.push(af_len as u8);
        if af_len > 0 {
            out.push(if pcr27.is_some() { 0x10 } else { 0x00 });
            let mut used = 1;
            if let Some(pcr) = pcr27 {
                let base = pcr / 300;
                let ext = pcr % 300;
                out.extend_from_slice(&[
                    (base >> 25) as u8,
                    (base >> 17) as u8,
                    (base >> 9) as u8,
                    (base >> 1) as u8,
                    (((base & 1) as u8) << 7) | 0x7E | ((ext >> 8) as u8 & 1),
                    ext as u8,
                ]);
                used += 6;
            }
            out.resize(out.len() + af_len - used, 0xFF);
        }
    }
    out.extend_from_slice(payload);
    debug_assert_eq!(out.len() - start, PACKET);
}

pub(crate) fn psi_packet(out: &mut Vec<u8>, pid: u16, cc: u8, section: &[u8]) {
    let mut payload = Vec::with_capacity(184);
    payload.push(0x00); // pointer_field
    payload.extend_from_slice(section);
    payload.resize(184, 0xFF);
    packet(out, pid, true, cc, None, &payload);
}

/// The 5-byte PES form of a 33-bit timestamp (PTS or DTS) with its 4-bit prefix
/// (`0b0010` for a lone PTS) and marker bits; [`crate::scan::parse_timestamp`] reads it.
pub(crate) fn encode_timestamp(prefix: u8, ts: u64) -> [u8; 5] {
    [
        (prefix << 4) | ((ts >> 29) & 0x0E) as u8 | 1,
        (ts >> 22) as u8,
        (((ts >> 14) & 0xFE) | 1) as u8,
        (ts >> 7) as u8,
        (((ts << 1) & 0xFE) | 1) as u8,
    ]
}

fn pes_for_frame(frame_index: u64, kbps_index: usize) -> Vec<u8> {
    let kbps = MP2_KBPS[kbps_index];
    let frame_len = (3 * kbps) as usize;
    let pts = frame_index * FRAME_MS * 90 + PTS_DELAY_90K;
    let mut pes = Vec::with_capacity(14 + frame_len);
    pes.extend_from_slice(&[0x00, 0x00, 0x01, 0xC0]);
    pes.extend_from_slice(&((8 + frame_len) as u16).to_be_bytes());
    pes.extend_from_slice(&[0x80, 0x80, 0x05]);
    pes.extend_from_slice(&encode_timestamp(0x2, pts));
    // Frame header: MPEG-1 Layer II, no CRC, 48 kHz; mono where the standard allows it.
    let mode = if kbps <= 192 { 0xC0 } else { 0x00 };
    pes.extend_from_slice(&[0xFF, 0xFD, ((kbps_index as u8) << 4) | 0x04, mode]);
    // All-zero bit allocation: a silent frame; the rest is ancillary data.
    pes.resize(14 + frame_len, 0x00);
    pes
}

/// Generates a complete MPEG-TS file of exactly [`VideoParams::size`] bytes.
pub fn generate(params: VideoParams) -> Result<Vec<u8>, TsError> {
    let kbps_index =
        pick_audio(params.bitrate_bps).ok_or(TsError::BitrateTooLow(params.bitrate_bps))?;
    let size = params.size();
    if size > 4 << 30 {
        return Err(TsError::TooLarge(size));
    }
    let mut out = Vec::with_capacity(size as usize);
    let (pat, pmt) = (pat_section(), pmt_section());
    let null = {
        let mut p = vec![0x47, 0x1F, 0xFF, 0x10];
        p.resize(PACKET, 0xFF);
        p
    };
    let mut cc = [0u8; 3]; // PAT, PMT, audio
    let mut next_psi_ms = 0u64;
    let mut frame = 0u64;
    let mut pending: std::collections::VecDeque<(u16, Vec<u8>, bool)> = Default::default();
    let slot_bits = PACKET as u128 * 8;
    for slot in 0..params.packets() {
        // Slot time in microseconds and in 27 MHz PCR ticks.
        let bits = slot as u128 * slot_bits;
        let t_us = (bits * 1_000_000 / params.bitrate_bps as u128) as u64;
        if pending.is_empty() {
            if t_us >= next_psi_ms * 1000 {
                pending.push_back((PID_PAT, pat.clone(), true));
                pending.push_back((PID_PMT, pmt.clone(), true));
                next_psi_ms += PSI_INTERVAL_MS;
            }
            if t_us >= frame * FRAME_MS * 1000 {
                let pes = pes_for_frame(frame, kbps_index);
                frame += 1;
                let first = pes.len().min(176);
                pending.push_back((PID_AUDIO, pes[..first].to_vec(), true));
                for chunk in pes[first..].chunks(184) {
                    pending.push_back((PID_AUDIO, chunk.to_vec(), false));
                }
            }
        }
        match pending.pop_front() {
            Some((PID_AUDIO, payload, first)) => {
                let pcr = first.then(|| (bits * 27_000_000 / params.bitrate_bps as u128) as u64);
                packet(&mut out, PID_AUDIO, first, cc[2], pcr, &payload);
                cc[2] = (cc[2] + 1) & 0x0F;
            }
            Some((pid, section, _)) => {
                let i = if pid == PID_PAT { 0 } else { 1 };
                psi_packet(&mut out, pid, cc[i], &section);
                cc[i] = (cc[i] + 1) & 0x0F;
            }
            None => out.extend_from_slice(&null),
        }
    }
    Ok(out)
}

/// Incremental integrity checker for a TS byte stream that may be cut and resumed at any byte.
///
/// It checks the sync byte of every packet, the transport error indicator and the continuity
/// counter of every PID that carries payload (null packets excluded). A lost, repeated or
/// foreign byte range shows up as a sync or continuity error. State is a few bytes per PID.
#[derive(Debug, Clone)]
pub struct TsChecker {
    pos: u64,
    header: [u8; 4],
    cc: Vec<(u16, u8)>,
    /// Index in `cc` of the last PID seen.
    last: usize,
    errors: u64,
    packets: u64,
}

impl TsChecker {
    /// A checker for a stream whose next byte is at absolute offset `pos` (packets start at
    /// multiples of 188 from offset 0).
    pub fn new(pos: u64) -> Self {
        Self {
            pos,
            header: [0; 4],
            cc: Vec::new(),
            last: 0,
            errors: 0,
            packets: 0,
        }
    }

    /// Absolute offset of the next expected byte.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Errors seen so far (bad sync byte, transport error, continuity gap).
    pub fn errors(&self) -> u64 {
        self.errors
    }

    /// Packet headers checked so far.
    pub fn packets(&self) -> u64 {
        self.packets
    }

    /// Feeds the next bytes of the stream.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let off = (self.pos % PACKET as u64) as usize;
            if off == 0 && data.len() >= PACKET {
                // Fast path (the load generator's hot loop): whole packets, headers in place.
                let whole = data.len() / PACKET * PACKET;
                for p in data[..whole].chunks_exact(PACKET) {
                    self.header.copy_from_slice(&p[..4]);
                    self.check_header();
                }
                self.pos += whole as u64;
                data = &data[whole..];
                continue;
            }
            if off < 4 {
                let take = (4 - off).min(data.len());
                self.header[off..off + take].copy_from_slice(&data[..take]);
                data = &data[take..];
                self.pos += take as u64;
                if off + take == 4 {
                    self.check_header();
                }
            } else {
                let skip = (PACKET - off).min(data.len());
                data = &data[skip..];
                self.pos += skip as u64;
            }
        }
    }

    fn check_header(&mut self) {
        self.packets += 1;
        let h = self.header;
        if h[0] != 0x47 || h[1] & 0x80 != 0 {
            self.errors += 1;
            return;
        }
        let pid = (((h[1] & 0x1F) as u16) << 8) | h[2] as u16;
        let has_payload = h[3] & 0x10 != 0;
        if pid == PID_NULL || !has_payload {
            return;
        }
        let cc = h[3] & 0x0F;
        // Most packets carry the same PID as the one before: look there first.
        let i = match self.cc.get(self.last) {
            Some((p, _)) if *p == pid => Some(self.last),
            _ => self.cc.iter().position(|(p, _)| *p == pid),
        };
        match i {
            Some(i) => {
                if cc != (self.cc[i].1 + 1) & 0x0F {
                    self.errors += 1;
                }
                self.cc[i].1 = cc;
                self.last = i;
            }
            None if self.cc.len() < 64 => self.cc.push((pid, cc)),
            None => {}
        }
    }
}

/// Reads the PCR of a packet, if it has one.
fn packet_pcr(p: &[u8]) -> Option<(u16, u64)> {
    if p.len() < 12 || p[0] != 0x47 || p[3] & 0x20 == 0 || p[4] < 7 || p[5] & 0x10 == 0 {
        return None;
    }
    let pid = (((p[1] & 0x1F) as u16) << 8) | p[2] as u16;
    let base = ((p[6] as u64) << 25)
        | ((p[7] as u64) << 17)
        | ((p[8] as u64) << 9)
        | ((p[9] as u64) << 1)
        | ((p[10] as u64) >> 7);
    let ext = (((p[10] & 1) as u64) << 8) | p[11] as u64;
    Some((pid, base * 300 + ext))
}

/// Estimates the bitrate of a TS file from the first and last PCR of the same PID.
/// Looks only at the first and last 4 MiB so it stays cheap on long files.
pub fn estimate_bitrate(data: &[u8]) -> Option<u64> {
    const SCAN: usize = 4 << 20;
    let packets = data.len() / PACKET;
    let first = (0..packets.min(SCAN / PACKET))
        .find_map(|i| packet_pcr(&data[i * PACKET..]).map(|(pid, pcr)| (i, pid, pcr)))?;
    let from = packets.saturating_sub(SCAN / PACKET).max(first.0 + 1);
    let last = (from..packets).rev().find_map(|i| {
        packet_pcr(&data[i * PACKET..]).and_then(|(pid, pcr)| (pid == first.1).then_some((i, pcr)))
    })?;
    let dpcr = last.1.checked_sub(first.2).filter(|d| *d > 0)?;
    let dbits = ((last.0 - first.0) * PACKET * 8) as u128;
    Some((dbits * 27_000_000 / dpcr as u128) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> VideoParams {
        VideoParams {
            bitrate_bps: 400_000,
            duration_ms: 3_000,
        }
    }

    #[test]
    fn generated_file_has_exact_size_and_valid_packets() {
        let v = generate(small()).unwrap();
        assert_eq!(v.len() as u64, small().size());
        assert_eq!(v.len() % PACKET, 0);
        // 3 s at 400 kbps = 150 000 bytes, rounded up to whole packets.
        assert_eq!(small().packets(), 798);
        let mut c = TsChecker::new(0);
        c.feed(&v);
        assert_eq!(c.errors(), 0);
        assert_eq!(c.packets(), 798);
    }

    #[test]
    fn estimated_bitrate_matches_requested() {
        for bps in [128_000u64, 400_000, 1_500_000] {
            let v = generate(VideoParams {
                bitrate_bps: bps,
                duration_ms: 4_000,
            })
            .unwrap();
            let est = estimate_bitrate(&v).unwrap();
            assert!(est.abs_diff(bps) * 100 < bps, "{bps}: estimated {est}");
        }
    }

    #[test]
    fn crc_of_known_vector() {
        // CRC-32/MPEG-2 check value for "123456789".
        assert_eq!(crc32_mpeg(b"123456789"), 0x0376_E6E7);
    }

    #[test]
    fn checker_accepts_any_cut_points() {
        let v = generate(small()).unwrap();
        let mut c = TsChecker::new(0);
        let mut i = 0;
        let mut step = 1;
        while i < v.len() {
            let end = (i + step).min(v.len());
            c.feed(&v[i..end]);
            i = end;
            step = step * 7 % 997 + 1;
        }
        assert_eq!(c.errors(), 0);
        assert_eq!(c.position(), v.len() as u64);
    }

    #[test]
    fn checker_detects_lost_and_repeated_bytes() {
        let v = generate(small()).unwrap();
        // Lose five packets (always includes audio) in the middle.
        let mut lost = TsChecker::new(0);
        lost.feed(&v[..20_000]);
        lost.feed(&v[20_000 + 5 * PACKET..40_000]);
        assert!(lost.errors() > 0);
        // Repeat a range.
        let mut rep = TsChecker::new(0);
        rep.feed(&v[..30_000]);
        rep.feed(&v[29_000..50_000]);
        assert!(rep.errors() > 0);
        // Resume at an arbitrary offset with a fresh checker.
        let mut resumed = TsChecker::new(12_345);
        resumed.feed(&v[12_345..]);
        assert_eq!(resumed.errors(), 0);
    }

    #[test]
    fn too_low_bitrate_is_an_error() {
        assert_eq!(
            generate(VideoParams {
                bitrate_bps: 10_000,
                duration_ms: 1000
            }),
            Err(TsError::BitrateTooLow(10_000))
        );
    }
}
