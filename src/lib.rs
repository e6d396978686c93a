//! skiff facade
