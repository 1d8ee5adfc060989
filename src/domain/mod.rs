//! Pure scheduling logic: the playlist model and its validation ([`playlist`]), the calendar that
//! turns schedule entries into time windows ([`calendar`]), and the resolver that turns playlists
//! into timelines ([`resolve`]).
//!
//! Nothing here reads the clock, touches files, the network or the database: callers pass `now`
//! and source text in and get values back. That is what lets the DST, priority and share-of-voice
//! rules be tested exhaustively.

pub mod calendar;
pub mod locate;
pub mod playlist;
pub mod resolve;

pub use playlist::{Playlist, PlaylistError, PlaylistFile, ValidationContext};
pub use resolve::{Stretch, TargetRef, explain, resolve};
