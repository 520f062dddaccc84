/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Extra kernel headers for which Lazarus needs Rust bindings. Included at the end
 * of rust/bindings/bindings_helper.h by scripts/kernel.sh. Keep this list small and
 * stable: a change regenerates the bindings and relinks vmlinux.
 */
#include <crypto/hash.h>
#include <linux/capability.h>
#include <linux/etherdevice.h>
#include <linux/if_arp.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/inetdevice.h>
#include <linux/ip.h>
#include <linux/net.h>
#include <linux/netdevice.h>
#include <linux/netfilter.h>
#include <linux/netfilter_ipv4.h>
#include <linux/random.h>
#include <linux/rtnetlink.h>
#include <linux/scatterlist.h>
#include <linux/sched/signal.h>
#include <linux/skbuff.h>
#include <linux/socket.h>
#include <linux/sysctl.h>
#include <linux/tcp.h>
#include <linux/timer.h>
#include <linux/udp.h>
#include <linux/uio.h>
#include <net/arp.h>
#include <net/genetlink.h>
#include <net/inet_hashtables.h>
#include <net/inet_sock.h>
#include <net/ip.h>
#include <net/net_namespace.h>
#include <net/netlink.h>
#include <net/route.h>
#include <net/sock.h>
#include <net/tcp.h>
#include <rdma/ib_verbs.h>
#include <rdma/rdma_cm.h>

/* Macros bindgen cannot evaluate. */
const gfp_t RUST_CONST_HELPER_LZ_GFP_ATOMIC_NOWARN = GFP_ATOMIC | __GFP_NOWARN;

/* One process as lz_for_each_process() reports it (remote healing). */
struct lz_proc_info {
	void *task;		/* valid during the callback only (RCU) */
	int pid;
	unsigned int uid;
	unsigned long long start_ns;
	unsigned long long rss_pages;
	char comm[16];
	unsigned char kthread;
};
typedef void (*lz_proc_cb)(void *ctx, const struct lz_proc_info *p);
