//! Property tests of the data plane's decoders that read bytes from outside (hostile input,
//! docs/security.md): the
//! HTTP request head, the workload control line and the checkpoint header. Arbitrary input
//! gives a typed error or a value, never a panic; valid input round-trips. The libFuzzer
//! targets in `fuzz/` explore the same functions with coverage guidance.

// A test, example or bench target links every dependency of its package; the lint
// is meant for the library.
#![allow(unused_crate_dependencies)]

use proptest::prelude::*;
use smart_vod::http::{parse_range, parse_request};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_heads_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = parse_request(&bytes);
    }

    #[test]
    fn valid_heads_round_trip(
        segs in proptest::collection::vec("[a-z0-9._-]{1,12}", 1..5),
        head_only in any::<bool>(),
        range in proptest::option::of((0u64..1 << 40, 0u64..1 << 20)),
        query in proptest::option::of("[a-z0-9=&]{0,16}"),
    ) {
        prop_assume!(segs.iter().all(|s| s != ".."));
        let path = format!("/{}", segs.join("/"));
        let mut head = format!(
            "{} {}{} HTTP/1.1\r\nHost: x\r\n",
            if head_only { "HEAD" } else { "GET" },
            path,
            query.as_ref().map(|q| format!("?{q}")).unwrap_or_default(),
        );
        if let Some((a, n)) = range {
            head.push_str(&format!("Range: bytes={a}-{}\r\n", a + n));
        }
        head.push_str("\r\n");
        let req = parse_request(head.as_bytes()).unwrap().expect("complete head");
        prop_assert_eq!(&req.path, &path);
        prop_assert_eq!(req.head_only, head_only);
        prop_assert_eq!(req.range.is_some(), range.is_some());
        if let Some(r) = &req.range {
            prop_assert!(parse_range(r).is_ok());
        }
        // Every strict prefix is incomplete (or refused), never a different request.
        for cut in [1, head.len() / 2, head.len() - 1] {
            if let Ok(Some(other)) = parse_request(&head.as_bytes()[..cut]) {
                prop_assert_eq!(other.path, req.path.clone());
            }
        }
    }
}
