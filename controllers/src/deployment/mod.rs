//! The Deployment controller's decisions (being written).
