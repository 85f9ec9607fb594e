//! The shop's pages, server-side against the real services, and end to end in headless Chromium.

mod browser;
mod edge;
mod helpers;
mod pages;
mod traces;
