//! ferry-cellnet (in progress).
