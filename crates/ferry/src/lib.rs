//! ferry (in progress).
