//! Integration tests against real processes: the `marquee` binary, its embedded broker, and a
//! real Mosquitto started on a free loopback port. One test binary (faster to link).

mod agent;
mod alerts;
mod aliyun;
mod approval;
mod brokers;
mod bus;
mod cap;
mod cli;
mod console;
mod core;
mod editing;
mod generic;
mod harness;
mod kannel;
mod leader;
mod lists;
mod mas;
mod openapi;
mod ops;
mod schema;
mod sms;
mod systemd;
mod tencent;
mod web;
