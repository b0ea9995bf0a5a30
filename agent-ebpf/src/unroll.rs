//! Loop unrolling by hand.
//!
//! Kernels before about 6.3 accept a bounded loop only if LLVM happens to
//! close it with a jump; when the loop header is laid out right after the
//! body, 6.1's verifier rejects the fall-through as a "back-edge". Small
//! fixed-count loops are therefore written unrolled, which every kernel
//! accepts and which costs a few dozen instructions.

/// Runs `$body` once per listed index, with `$index` bound to it. `return`
/// inside the body returns from the enclosing function.
macro_rules! unroll {
    ($index:ident in [$($n:literal),* $(,)?] $body:block) => {
        $(
            {
                let $index: usize = $n;
                $body
            }
        )*
    };
}
