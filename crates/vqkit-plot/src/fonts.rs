//! The one font every figure uses: DejaVu Sans, embedded in the binary and registered
//! with plotters' ab_glyph text renderer under [`FAMILY`].
//!
//! Why embedded: plotters' default text path asks the system for fonts through
//! fontconfig and freetype, which a fresh machine or a CI container may lack, and which
//! draws a figure differently on each machine. DejaVu Sans (Bitstream Vera licence, free
//! to embed and redistribute; the licence is `fonts/DejaVuSans-LICENSE` beside the file)
//! is taken from Debian's `fonts-dejavu-core` package unmodified.

use crate::{Error, Result};
use plotters::style::{FontStyle, register_font};
use std::sync::OnceLock;

/// The font family name the figures ask for.
pub const FAMILY: &str = "sans-serif";

/// DejaVu Sans, the TrueType file as shipped.
pub static DEJAVU_SANS: &[u8] = include_bytes!("../fonts/DejaVuSans.ttf");

/// Registers [`DEJAVU_SANS`] as [`FAMILY`] once per process; every drawing function
/// calls it first.
pub fn register() -> Result<()> {
    static DONE: OnceLock<bool> = OnceLock::new();
    let ok = *DONE.get_or_init(|| register_font(FAMILY, FontStyle::Normal, DEJAVU_SANS).is_ok());
    if ok {
        Ok(())
    } else {
        Err(Error::Draw(
            "the bundled font DejaVu Sans could not be parsed".into(),
        ))
    }
}
