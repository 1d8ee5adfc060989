//! SMS campaigns: gateway configuration ([`config`]), campaign creation and cost
//! ([`campaign`]), gateway drivers ([`gateway`]), the dispatcher ([`dispatch`]) and delivery
//! reports ([`dlr`]). Only this module calls gateways.

pub mod campaign;
pub mod campaigns;
pub mod config;
pub mod dispatch;
pub mod dlr;
pub mod gateway;
pub mod reconcile;
