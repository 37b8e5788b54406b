//! U-Nets.
