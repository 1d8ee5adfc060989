//! Pure logic: the playlist model and its validation ([`playlist`]), the calendar that turns
//! schedule entries into time windows ([`calendar`]), the resolver that turns playlists into
//! timelines ([`resolve`]); and for SMS: segment counting ([`segments`]), phone numbers
//! ([`phone`]), the delivery state machine ([`delivery`]), the campaign and alert lifecycles
//! ([`campaign`]) and quiet hours ([`quiet`]).
//!
//! Nothing here reads the clock, touches files, the network or the database: callers pass `now`
//! and source text in and get values back. That is what lets the DST, priority and share-of-voice
//! rules be tested exhaustively.

pub mod calendar;
pub mod campaign;
pub mod cap;
pub mod cron;
pub mod delivery;
pub mod locate;
pub mod phone;
pub mod playlist;
pub mod quiet;
pub mod resolve;
pub mod segments;

pub use playlist::{Playlist, PlaylistError, PlaylistFile, ValidationContext};
pub use resolve::{Stretch, TargetRef, explain, impact, resolve};
