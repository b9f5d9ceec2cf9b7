//! Values chosen by name (a backend, an initialisation, a method): one list of names per
//! type, shared by command lines, model files and JSON, so that a name means the same thing
//! everywhere and a wrong one is a typed error listing the right ones.

use crate::error::{Error, Result};

/// A type with a fixed set of named values.
pub trait Choice: Copy + Send + Sync + 'static {
    /// What is chosen, for messages ("backend", "init").
    const WHAT: &'static str;
    /// Every value, in the order listings show them.
    const ALL: &'static [Self];
    /// This value's name.
    fn name(self) -> &'static str;
    /// The value called `name`, or an error listing the names.
    fn from_name(name: &str) -> Result<Self> {
        Self::ALL
            .iter()
            .copied()
            .find(|v| v.name() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|v| v.name()).collect();
                Error::invalid(
                    Self::WHAT,
                    format!(
                        "unknown value '{name}'; expected one of {}",
                        names.join(", ")
                    ),
                )
            })
    }
}

/// Implements [`Choice`], `as_str`, `Display` and `FromStr` for an enum from its
/// `Variant => "name"` pairs.
#[macro_export]
macro_rules! impl_choice {
    ($ty:ty, $what:literal, { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $crate::choice::Choice for $ty {
            const WHAT: &'static str = $what;
            const ALL: &'static [Self] = &[$(<$ty>::$variant),+];
            fn name(self) -> &'static str {
                match self {
                    $(<$ty>::$variant => $name),+
                }
            }
        }
        impl $ty {
            /// This value's name, as command lines and files spell it.
            pub fn as_str(self) -> &'static str {
                $crate::choice::Choice::name(self)
            }
        }
        impl ::std::fmt::Display for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str($crate::choice::Choice::name(*self))
            }
        }
        impl ::std::str::FromStr for $ty {
            type Err = $crate::Error;
            fn from_str(s: &str) -> $crate::Result<Self> {
                <$ty as $crate::choice::Choice>::from_name(s)
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::Choice;
    use crate::backend::BackendKind;

    #[test]
    fn names_round_trip_and_unknown_names_list_the_choices() {
        for &b in BackendKind::ALL {
            assert_eq!(b.name().parse::<BackendKind>().unwrap(), b);
            assert_eq!(b.to_string(), b.as_str());
        }
        let e = "tpu".parse::<BackendKind>().unwrap_err().to_string();
        assert!(e.contains("'tpu'") && e.contains("cpu, wgpu, cuda"), "{e}");
    }
}
