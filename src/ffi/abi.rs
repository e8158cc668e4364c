//! The first version (V1) of every C struct that carries a `struct_size`, frozen.
//!
//! A caller compiled against an older header passes the older, smaller `struct_size`; the
//! library reads the V1 fields and treats any later ones as absent. For that to keep working,
//! each V1 size is a number, not `size_of` the current struct (which the first appended field
//! would silently change), and each V1 field keeps its offset: both are checked at compile
//! time. The numbers are those of 64-bit targets (LP64, the platforms Xen's toolstacks run on);
//! elsewhere the V1 size is the current size and the checks are off.

/// The size of the field `_f` reads; only its type matters.
pub(crate) const fn field_size<T, F>(_f: fn(&T) -> &F) -> usize {
    std::mem::size_of::<F>()
}

/// `frozen_v1!(NAME = Type [size] { field @ offset, ... });` defines `NAME` as the V1 size of
/// `Type` and checks at compile time that every listed V1 field is still at its offset and
/// inside the V1 size, and that the struct has not shrunk.
macro_rules! frozen_v1 {
    ($(#[$doc:meta])* $vis:vis $name:ident = $t:ty [$size:literal] { $($field:ident @ $off:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[cfg(target_pointer_width = "64")]
        $vis const $name: usize = $size;
        $(#[$doc])*
        #[cfg(not(target_pointer_width = "64"))]
        $vis const $name: usize = std::mem::size_of::<$t>();
        #[cfg(target_pointer_width = "64")]
        const _: () = {
            assert!(
                std::mem::size_of::<$t>() >= $name,
                concat!(stringify!($t), " is smaller than its frozen V1 size")
            );
            $(
                assert!(
                    std::mem::offset_of!($t, $field) == $off,
                    concat!(stringify!($t), ".", stringify!($field), " moved: V1 layouts are frozen")
                );
                assert!(
                    $off + $crate::ffi::abi::field_size(|s: &$t| &s.$field) <= $name,
                    concat!(stringify!($t), ".", stringify!($field), " grew past the V1 size")
                );
            )+
        };
    };
}
pub(crate) use frozen_v1;
