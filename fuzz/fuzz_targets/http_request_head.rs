//! Arbitrary bytes as an HTTP/1.1 request head (origin, distributor and front-end all read
//! heads with `smart_vod::http::parse_request`): a typed error or a request, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(req)) = smart_vod::http::parse_request(data)
        && let Some(r) = &req.range
        && let Ok(spec) = smart_vod::http::parse_range(r)
    {
        // Whatever parsed must be usable: resolving the range does not panic either.
        let _ = smart_vod::http::resolve_range(spec, 1 << 20);
    }
});
