//! follow
