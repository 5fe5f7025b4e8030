//! End-to-end decisions on small clusters: which node wins and the exact message when none
//! does.
