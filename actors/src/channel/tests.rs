//! Channel tests (being written).
