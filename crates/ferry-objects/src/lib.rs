//! ferry-objects (in progress).
