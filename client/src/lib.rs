//! `shoal-client`: the native Shoal client library and the `shoal` command-line client.
