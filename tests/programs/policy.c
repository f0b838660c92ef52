/* Calls libnuma and the memory-policy system calls, printing what they answer, one
 * "key value" a line, for tests/test_syscalls.py.
 *   policy show     what the model's nodes look like through libnuma and the calls
 *   policy errors   calls with bad arguments: each one's errno (or 0)
 *   policy fuzz N   N calls with random pointers, masks and modes, then one good call
 *   policy touch MB      MB of anonymous memory written, under the policy it was run with
 *   policy rate CALL N   N calls of get_mempolicy (trapped) or getppid (not): calls per second
 *   policy signals N     N get_mempolicy calls under a 50 us SA_RESTART timer: calls that failed
 *   policy listener      its own seccomp filter with a listener: the errno */
#define _GNU_SOURCE
#include <errno.h>
#include <numa.h>
#include <numaif.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#ifndef MPOL_F_STATIC_NODES
#define MPOL_F_STATIC_NODES (1 << 15)
#define MPOL_F_RELATIVE_NODES (1 << 14)
#endif

#define PAGES 4
#define BAD ((void *)16)

static long page;

static void nodes_of(const char *key, void *p, int n)
{
	void *pages[64];
	int status[64];
	printf("%s", key);
	for (int i = 0; i < n; i++)
		pages[i] = (char *)p + i * page;
	if (move_pages(0, n, pages, NULL, status, 0) != 0) {
		printf(" error %d\n", errno);
		return;
	}
	for (int i = 0; i < n; i++)
		printf(" %d", status[i]);
	printf("\n");
}

static void policy_of(const char *key)
{
	int mode = -1;
	unsigned long mask[16] = {0};
	if (get_mempolicy(&mode, mask, 1024, NULL, 0) != 0) {
		printf("%s error %d\n", key, errno);
		return;
	}
	printf("%s %d", key, mode);
	for (int i = 0; i < 1024; i++)
		if (mask[i / 64] >> (i % 64) & 1)
			printf(" %d", i);
	printf("\n");
}

static void *thread(void *arg)
{
	struct bitmask *b = numa_parse_nodestring((char *)arg);
	numa_set_interleave_mask(b);
	policy_of("thread_policy");
	return NULL;
}

static int show(void)
{
	int max = numa_max_node();
	printf("available %d\n", numa_available());
	printf("max_node %d\n", max);
	printf("configured %d\n", numa_num_configured_nodes());
	policy_of("start_policy");

	char *p = numa_alloc_onnode(PAGES * page, max);
	memset(p, 1, PAGES * page);
	nodes_of("onnode", p, PAGES);

	char *r = mmap(NULL, PAGES * page, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	numa_tonode_memory(r, PAGES * page, max - 1);
	memset(r, 1, PAGES * page);
	nodes_of("tonode", r, PAGES);

	void *pages[PAGES];
	int nodes[PAGES], status[PAGES];
	for (int i = 0; i < PAGES; i++) {
		pages[i] = p + i * page;
		nodes[i] = i % 2 ? 1 : max;
	}
	printf("move %ld\n", (long)move_pages(0, PAGES, pages, nodes, status, MPOL_MF_MOVE));
	nodes_of("moved", p, PAGES);
	int node = -1;
	get_mempolicy(&node, NULL, 0, p + page, MPOL_F_NODE | MPOL_F_ADDR);
	printf("addr_node %d\n", node);

	char *q = mmap(NULL, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	munmap(q + page, page);
	nodes_of("absent", q, 2);

	struct bitmask *five = numa_parse_nodestring("5");
	numa_set_membind(five);
	policy_of("membind");
	int mode = -1;
	get_mempolicy(&mode, NULL, 0, p, MPOL_F_ADDR);
	printf("range_mode %d\n", mode);

	pthread_t t;
	pthread_create(&t, NULL, thread, "1-2");
	pthread_join(t, NULL);
	policy_of("main_policy");
	numa_set_localalloc();
	policy_of("local");
	return 0;
}

#define TRY(name, call) printf("%s %d\n", name, (call) == 0 ? 0 : errno)

static int errors(void)
{
	unsigned long mask[16] = {0}, big[16] = {0};
	int mode;
	char *p = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	void *pages[1] = {p};
	int status[1], bad_node[1] = {-3};
	mask[0] = 1;
	big[15] = 1UL << 63;
	TRY("get_bad_mode_ptr", get_mempolicy(BAD, NULL, 0, NULL, 0));
	TRY("get_bad_mask_ptr", get_mempolicy(&mode, BAD, 1024, NULL, 0));
	TRY("get_short_maxnode", get_mempolicy(&mode, mask, 1, NULL, 0));
	TRY("get_bad_flags", get_mempolicy(&mode, NULL, 0, NULL, 64));
	TRY("get_addr_no_flag", get_mempolicy(&mode, NULL, 0, p, 0));
	TRY("get_unmapped_addr", get_mempolicy(&mode, NULL, 0, BAD, MPOL_F_ADDR));
	TRY("get_node_default", get_mempolicy(&mode, NULL, 0, NULL, MPOL_F_NODE));
	TRY("get_mems_and_node", get_mempolicy(&mode, NULL, 0, NULL,
					       MPOL_F_MEMS_ALLOWED | MPOL_F_NODE));
	TRY("set_bad_mode", set_mempolicy(99, mask, 64));
	TRY("set_static_relative", set_mempolicy(MPOL_BIND | MPOL_F_STATIC_NODES |
						 MPOL_F_RELATIVE_NODES, mask, 64));
	TRY("set_bad_mask_ptr", set_mempolicy(MPOL_BIND, BAD, 64));
	TRY("set_empty_bind", set_mempolicy(MPOL_BIND, NULL, 0));
	TRY("set_default_nodes", set_mempolicy(MPOL_DEFAULT, mask, 64));
	TRY("set_local_nodes", set_mempolicy(MPOL_LOCAL, mask, 64));
	TRY("set_beyond_max", set_mempolicy(MPOL_BIND, big, 1024));
	TRY("set_huge_maxnode", set_mempolicy(MPOL_BIND, mask, 1UL << 40));
	TRY("mbind_unaligned", mbind(p + 1, page, MPOL_BIND, mask, 64, 0));
	TRY("mbind_bad_flags", mbind(p, page, MPOL_BIND, mask, 64, 64));
	TRY("mbind_bad_mask_ptr", mbind(p, page, MPOL_BIND, BAD, 64, 0));
	TRY("mbind_unmapped", mbind((void *)(16 * page), page, MPOL_BIND, mask, 64, 0));
	TRY("mbind_empty", mbind(p, 0, MPOL_BIND, mask, 64, 0));
	TRY("move_bad_pages_ptr", move_pages(0, 1, BAD, NULL, status, 0));
	TRY("move_bad_status_ptr", move_pages(0, 1, pages, NULL, BAD, 0));
	TRY("move_bad_flags", move_pages(0, 1, pages, NULL, status, 64));
	TRY("move_bad_node", move_pages(0, 1, pages, bad_node, status, 0));
	TRY("move_no_such_pid", move_pages(1 << 30, 1, pages, NULL, status, 0));
	TRY("home_bad_flags", syscall(450, p, page, 0, 1));
	TRY("home_unaligned", syscall(450, p + 1, page, 0, 0));
	TRY("migrate_bad_mask_ptr", migrate_pages(0, 64, BAD, mask));
	return 0;
}

static int fuzz(int n)
{
	long calls[] = {__NR_get_mempolicy, __NR_set_mempolicy, __NR_mbind, __NR_move_pages,
			__NR_migrate_pages, 450};
	srandom(n);
	char *p = mmap(NULL, 4 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	for (int i = 0; i < n; i++) {
		long a[6];
		for (int j = 0; j < 6; j++) {
			switch (random() % 5) {
			case 0: a[j] = random(); break;
			case 1: a[j] = (long)p + random() % (4 * page); break;
			case 2: a[j] = random() % 2048; break;
			case 3: a[j] = ((long)random() << 33) | random(); break;
			default: a[j] = 0;
			}
		}
		if (calls[i % 6] == __NR_move_pages || calls[i % 6] == __NR_migrate_pages)
			a[0] = 0;	/* only this process */
		syscall(calls[i % 6], a[0], a[1], a[2], a[3], a[4], a[5]);
	}
	set_mempolicy(MPOL_DEFAULT, NULL, 0);
	policy_of("after_fuzz");
	return 0;
}

static int touch(long mb)
{
	volatile char *p = malloc(mb << 20);	/* volatile: every page is written */
	for (long i = 0; i < mb << 20; i += page)
		p[i] = 1;
	printf("touched %ld\n", mb);
	return 0;
}

static int rate(const char *call, long n)
{
	struct timespec a, b;
	int mode;
	clock_gettime(CLOCK_MONOTONIC, &a);
	for (long i = 0; i < n; i++) {
		if (!strcmp(call, "get_mempolicy"))
			get_mempolicy(&mode, NULL, 0, NULL, 0);
		else
			syscall(__NR_getppid);
	}
	clock_gettime(CLOCK_MONOTONIC, &b);
	printf("per_second %.1f\n", n / (b.tv_sec - a.tv_sec + (b.tv_nsec - a.tv_nsec) * 1e-9));
	return 0;
}

static volatile long ticks;

static void tick(int sig)
{
	(void)sig;
	ticks++;
}

static int signals(long n)
{
	struct sigaction sa = {.sa_handler = tick, .sa_flags = SA_RESTART};
	struct itimerval every = {{0, 50}, {0, 50}};
	long failed = 0;
	int mode;
	sigaction(SIGALRM, &sa, NULL);
	setitimer(ITIMER_REAL, &every, NULL);
	for (long i = 0; i < n; i++)
		if (get_mempolicy(&mode, NULL, 0, NULL, 0) != 0)
			failed++;
	setitimer(ITIMER_REAL, &(struct itimerval){0}, NULL);
	printf("failed %ld\nticks %ld\n", failed, ticks);
	return 0;
}

static int listener(void)
{
	struct sock_filter allow = BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
	struct sock_fprog prog = {1, &allow};
	prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
	long fd = syscall(__NR_seccomp, SECCOMP_SET_MODE_FILTER,
			  SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
	printf("listener %d\n", fd < 0 ? errno : 0);
	return 0;
}

int main(int argc, char **argv)
{
	page = sysconf(_SC_PAGESIZE);
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc > 1 && !strcmp(argv[1], "show"))
		return show();
	if (argc > 1 && !strcmp(argv[1], "errors"))
		return errors();
	if (argc > 2 && !strcmp(argv[1], "fuzz"))
		return fuzz(atoi(argv[2]));
	if (argc > 2 && !strcmp(argv[1], "touch"))
		return touch(atol(argv[2]));
	if (argc > 2 && !strcmp(argv[1], "signals"))
		return signals(atol(argv[2]));
	if (argc > 1 && !strcmp(argv[1], "listener"))
		return listener();
	if (argc > 3 && !strcmp(argv[1], "rate"))
		return rate(argv[2], atol(argv[3]));
	fprintf(stderr, "usage: policy show|errors|fuzz N|touch MB|rate CALL N|signals N|"
		"listener\n");
	return 2;
}
