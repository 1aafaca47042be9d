//! Control engine tests on the exact outputs it emits (openraft style).
