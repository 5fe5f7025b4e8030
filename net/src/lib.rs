//! Pod networking, VXLAN overlay, nftables Service proxy and cluster DNS (issue: networking). Not built yet.
