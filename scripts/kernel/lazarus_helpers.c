// SPDX-License-Identifier: GPL-2.0
/*
 * C helpers for static inline kernel functions and macros that Lazarus calls from
 * Rust. Included at the end of rust/helpers/helpers.c by scripts/kernel.sh.
 * Each helper is a one-line forward; the Rust side sees `bindings::<name>`.
 * Helpers named lz_* have no C function of the same name.
 */
#include <crypto/hash.h>
#include <linux/jiffies.h>
#include <linux/kernel_stat.h>
#include <linux/netfilter.h>
#include <linux/rcupdate.h>
#include <linux/cred.h>
#include <linux/mm.h>
#include <linux/sched/signal.h>
#include <linux/sched/stat.h>
#include <linux/skbuff.h>
#include <linux/timer.h>
#include <linux/vmstat.h>
#include <linux/workqueue.h>
#include <net/genetlink.h>
#include <net/netlink.h>
#include <net/sock.h>
#include <net/tcp.h>
#include <rdma/ib_verbs.h>
#if IS_ENABLED(CONFIG_NF_CONNTRACK)
#include <net/netfilter/nf_conntrack.h>
#endif
#include "../bindings/lazarus_bindings.h"

/* --- sk_buff ---------------------------------------------------------------- */
unsigned char *rust_helper_skb_network_header(const struct sk_buff *skb)
{ return skb_network_header(skb); }
unsigned char *rust_helper_skb_transport_header(const struct sk_buff *skb)
{ return skb_transport_header(skb); }
void rust_helper_skb_set_transport_header(struct sk_buff *skb, int offset)
{ skb_set_transport_header(skb, offset); }
void rust_helper_skb_reset_network_header(struct sk_buff *skb)
{ skb_reset_network_header(skb); }
unsigned int rust_helper_skb_headlen(const struct sk_buff *skb)
{ return skb_headlen(skb); }
int rust_helper_skb_linearize(struct sk_buff *skb)
{ return skb_linearize(skb); }
bool rust_helper_pskb_may_pull(struct sk_buff *skb, unsigned int len)
{ return pskb_may_pull(skb, len); }
bool rust_helper_skb_is_gso(const struct sk_buff *skb)
{ return skb_is_gso(skb); }
unsigned short rust_helper_lz_skb_gso_size(const struct sk_buff *skb)
{ return skb_shinfo(skb)->gso_size; }
unsigned short rust_helper_lz_skb_gso_segs(const struct sk_buff *skb)
{ return skb_shinfo(skb)->gso_segs; }
void rust_helper_kfree_skb(struct sk_buff *skb)
{ kfree_skb(skb); }
struct sk_buff *rust_helper_alloc_skb(unsigned int size, gfp_t priority)
{ return alloc_skb(size, priority); }
void rust_helper_skb_reserve(struct sk_buff *skb, int len)
{ skb_reserve(skb, len); }
u8 rust_helper_lz_skb_ip_summed(const struct sk_buff *skb)
{ return skb->ip_summed; }
void rust_helper_lz_skb_set_ip_summed(struct sk_buff *skb, u8 v)
{ skb->ip_summed = v; }
u16 rust_helper_lz_skb_csum_start(const struct sk_buff *skb)
{ return skb->csum_start; }
u16 rust_helper_lz_skb_csum_offset(const struct sk_buff *skb)
{ return skb->csum_offset; }
struct net_device *rust_helper_lz_skb_dev(const struct sk_buff *skb)
{ return skb->dev; }
int rust_helper_dev_queue_xmit(struct sk_buff *skb)
{ return dev_queue_xmit(skb); }
/* Mark an skb we rewrote or injected as untracked so conntrack does not call it INVALID. */
void rust_helper_lz_skb_set_untracked(struct sk_buff *skb)
{
#if IS_ENABLED(CONFIG_NF_CONNTRACK)
	nf_reset_ct(skb);
	nf_ct_set(skb, NULL, IP_CT_UNTRACKED);
#endif
}

/* --- generic netlink -------------------------------------------------------- */
struct sk_buff *rust_helper_genlmsg_new(size_t payload, gfp_t flags)
{ return genlmsg_new(payload, flags); }
void rust_helper_genlmsg_end(struct sk_buff *skb, void *hdr)
{ genlmsg_end(skb, hdr); }
void rust_helper_genlmsg_cancel(struct sk_buff *skb, void *hdr)
{ genlmsg_cancel(skb, hdr); }
int rust_helper_genlmsg_reply(struct sk_buff *skb, struct genl_info *info)
{ return genlmsg_reply(skb, info); }
int rust_helper_genlmsg_multicast_netns(const struct genl_family *family, struct net *net,
					struct sk_buff *skb, u32 portid, unsigned int group,
					gfp_t flags)
{ return genlmsg_multicast_netns(family, net, skb, portid, group, flags); }
struct net *rust_helper_genl_info_net(const struct genl_info *info)
{ return genl_info_net(info); }
void rust_helper_nlmsg_free(struct sk_buff *skb)
{ nlmsg_free(skb); }
struct nlattr *rust_helper_nla_nest_start(struct sk_buff *skb, int attrtype)
{ return nla_nest_start(skb, attrtype); }
int rust_helper_nla_nest_end(struct sk_buff *skb, struct nlattr *start)
{ return nla_nest_end(skb, start); }
void rust_helper_nla_nest_cancel(struct sk_buff *skb, struct nlattr *start)
{ nla_nest_cancel(skb, start); }
/* GENL_SET_ERR_MSG() wants a literal; callers pass a string with static lifetime. */
void rust_helper_lz_genl_set_err_msg(struct genl_info *info, const char *msg)
{ if (info->extack) info->extack->_msg = msg; }
void rust_helper_lz_genl_set_bad_attr(struct genl_info *info, int attr)
{ if (info->attrs[attr]) NL_SET_BAD_ATTR(info->extack, info->attrs[attr]); }

/* --- time, timers, work ----------------------------------------------------- */
unsigned long rust_helper_lz_jiffies(void)
{ return READ_ONCE(jiffies); }
unsigned long rust_helper_msecs_to_jiffies(unsigned int m)
{ return msecs_to_jiffies(m); }
unsigned int rust_helper_jiffies_to_msecs(unsigned long j)
{ return jiffies_to_msecs(j); }
void rust_helper_lz_timer_setup(struct timer_list *timer,
				void (*func)(struct timer_list *), unsigned int flags)
{ timer_setup(timer, func, flags); }
void rust_helper_lz_init_delayed_work(struct delayed_work *dw, work_func_t func)
{ INIT_DELAYED_WORK(dw, func); }
bool rust_helper_queue_delayed_work(struct workqueue_struct *wq, struct delayed_work *dw,
				    unsigned long delay)
{ return queue_delayed_work(wq, dw, delay); }
struct workqueue_struct *rust_helper_lz_system_wq(void)
{ return system_wq; }

/* --- network namespaces ---------------------------------------------------- */
struct net *rust_helper_get_net(struct net *net)
{ return get_net(net); }
void rust_helper_put_net(struct net *net)
{ put_net(net); }

/* --- RCU -------------------------------------------------------------------- */
void rust_helper_rcu_read_lock(void) { rcu_read_lock(); }
void rust_helper_rcu_read_unlock(void) { rcu_read_unlock(); }

/* --- sockets ---------------------------------------------------------------- */
struct tcp_sock *rust_helper_tcp_sk(struct sock *sk)
{ return tcp_sk(sk); }
struct inet_connection_sock *rust_helper_inet_csk(struct sock *sk)
{ return inet_csk(sk); }
struct inet_sock *rust_helper_inet_sk(struct sock *sk)
{ return inet_sk(sk); }
/* kernel_setsockopt() is gone; kernel sockets call the protocol op with a kernel pointer. */
int rust_helper_lz_sock_setsockopt(struct socket *sock, int level, int optname,
				   void *optval, unsigned int optlen)
{
	sockptr_t p = KERNEL_SOCKPTR(optval);

	if (level == SOL_SOCKET)
		return sock_setsockopt(sock, level, optname, p, optlen);
	return sock->ops->setsockopt(sock, level, optname, p, optlen);
}
void rust_helper_lz_sock_set_timeouts(struct socket *sock, long rcv_jiffies, long snd_jiffies)
{
	WRITE_ONCE(sock->sk->sk_rcvtimeo, rcv_jiffies);
	WRITE_ONCE(sock->sk->sk_sndtimeo, snd_jiffies);
}

/* --- crypto ----------------------------------------------------------------- */
void rust_helper_crypto_free_shash(struct crypto_shash *tfm)
{ crypto_free_shash(tfm); }

/* --- RDMA verbs ------------------------------------------------------------- */
int rust_helper_ib_post_send(struct ib_qp *qp, const struct ib_send_wr *wr,
			     const struct ib_send_wr **bad)
{ return ib_post_send(qp, wr, bad); }
int rust_helper_ib_post_recv(struct ib_qp *qp, const struct ib_recv_wr *wr,
			     const struct ib_recv_wr **bad)
{ return ib_post_recv(qp, wr, bad); }
int rust_helper_ib_poll_cq(struct ib_cq *cq, int n, struct ib_wc *wc)
{ return ib_poll_cq(cq, n, wc); }
int rust_helper_ib_req_notify_cq(struct ib_cq *cq, enum ib_cq_notify_flags flags)
{ return ib_req_notify_cq(cq, flags); }
u64 rust_helper_ib_dma_map_single(struct ib_device *dev, void *cpu_addr, size_t size,
				  enum dma_data_direction dir)
{ return ib_dma_map_single(dev, cpu_addr, size, dir); }
void rust_helper_ib_dma_unmap_single(struct ib_device *dev, u64 addr, size_t size,
				     enum dma_data_direction dir)
{ ib_dma_unmap_single(dev, addr, size, dir); }
int rust_helper_ib_dma_mapping_error(struct ib_device *dev, u64 dma_addr)
{ return ib_dma_mapping_error(dev, dma_addr); }

/* --- devices, sockets and bottom halves (shadowing, takeover) -------------- */
void rust_helper_lz_dev_put(struct net_device *dev)
{ dev_put(dev); }
u8 rust_helper_lz_skb_pkt_type(const struct sk_buff *skb)
{ return skb->pkt_type; }
void rust_helper_lz_skb_set_pkt_type(struct sk_buff *skb, u8 type)
{ skb->pkt_type = type; }
void rust_helper_skb_reset_mac_header(struct sk_buff *skb)
{ skb_reset_mac_header(skb); }
void rust_helper_skb_reset_transport_header(struct sk_buff *skb)
{ skb_reset_transport_header(skb); }
void rust_helper_local_bh_disable(void)
{ local_bh_disable(); }
void rust_helper_local_bh_enable(void)
{ local_bh_enable(); }
void rust_helper_lz_bh_lock_sock(struct sock *sk)
{ bh_lock_sock(sk); }
void rust_helper_lz_bh_unlock_sock(struct sock *sk)
{ bh_unlock_sock(sk); }
bool rust_helper_lz_sock_owned_by_user(const struct sock *sk)
{ return sock_owned_by_user_nocheck(sk); }

/* --- sensor sources (read-only counters for the Sensor Box) ----------------- */
unsigned long long rust_helper_lz_nr_context_switches(void)
{ return nr_context_switches(); }
unsigned int rust_helper_lz_nr_running(void)
{ return nr_running(); }
int rust_helper_lz_nr_threads(void)
{ return READ_ONCE(nr_threads); }
unsigned long rust_helper_lz_total_forks(void)
{ return READ_ONCE(total_forks); }
unsigned long rust_helper_lz_oom_kills(void)
{
	unsigned long sum = 0;
#ifdef CONFIG_VM_EVENT_COUNTERS
	int cpu;

	/* Sum one event directly: all_vm_events() needs a ~1 KiB array on the stack. */
	for_each_online_cpu(cpu)
		sum += per_cpu(vm_event_states, cpu).event[OOM_KILL];
#endif
	return sum;
}

/* --- processes (remote healing) ------------------------------------------- */
/*
 * Report every live process (thread group leader; not a zombie waiting to be
 * reaped) to cb under RCU: cb must not sleep. The task pointer is valid during the
 * call only.
 */
void rust_helper_lz_for_each_process(lz_proc_cb cb, void *ctx)
{
	struct task_struct *p;
	struct lz_proc_info i;

	rcu_read_lock();
	for_each_process(p) {
		if (READ_ONCE(p->exit_state))
			continue;
		i.task = p;
		i.pid = task_tgid_nr(p);
		i.uid = from_kuid_munged(&init_user_ns, task_uid(p));
		i.start_ns = p->start_boottime;
		i.kthread = !!(p->flags & PF_KTHREAD);
		i.rss_pages = 0;
		task_lock(p);
		if (p->mm)
			i.rss_pages = get_mm_rss(p->mm);
		task_unlock(p);
		__get_task_comm(i.comm, sizeof(i.comm), p);
		cb(ctx, &i);
	}
	rcu_read_unlock();
}
/* SIGKILL a task reported by lz_for_each_process(), from its callback. */
int rust_helper_lz_kill_task(void *task)
{ return send_sig(SIGKILL, (struct task_struct *)task, 1); }
unsigned long rust_helper_lz_free_pages(void)
{ return global_zone_page_state(NR_FREE_PAGES); }
unsigned long rust_helper_lz_total_pages(void)
{ return totalram_pages(); }
