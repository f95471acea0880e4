//! User-space pagers for machvm.
