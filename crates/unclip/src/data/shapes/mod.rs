//! The shapes world (shared/SHAPES.md).
