/* loop_timer — see loop_timer.h. */
#include "http/loop_timer.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

struct loop_timer {
    int fd;
    sd_event_source *source;
    loop_timer_fn fn;
    void *userdata;
};

static int on_expired(sd_event_source *source, int fd, uint32_t revents, void *userdata)
{
    loop_timer *timer = userdata;
    uint64_t expirations;

    (void)source;
    (void)revents;
    /* Reading clears the readiness; EAGAIN means it was re-armed meanwhile. */
    if (read(fd, &expirations, sizeof expirations) != sizeof expirations)
        return 0;
    timer->fn(timer->userdata);
    return 0;
}

loop_timer *loop_timer_new(sd_event *event, loop_timer_fn fn, void *userdata)
{
    loop_timer *timer = calloc(1, sizeof *timer);
    if (!timer)
        return NULL;
    timer->fn = fn;
    timer->userdata = userdata;
    timer->fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (timer->fd < 0 ||
        sd_event_add_io(event, &timer->source, timer->fd, EPOLLIN, on_expired, timer) < 0) {
        loop_timer_free(timer);
        return NULL;
    }
    return timer;
}

void loop_timer_free(loop_timer *timer)
{
    if (!timer)
        return;
    sd_event_source_disable_unref(timer->source);
    if (timer->fd >= 0)
        close(timer->fd);
    free(timer);
}

int loop_timer_arm(loop_timer *timer, uint64_t delay_usec)
{
    struct itimerspec spec = {0};
    /* An all-zero it_value would disarm: the shortest real delay is 1 ns. */
    if (delay_usec == 0)
        spec.it_value.tv_nsec = 1;
    else {
        spec.it_value.tv_sec = (time_t)(delay_usec / 1000000);
        spec.it_value.tv_nsec = (long)(delay_usec % 1000000) * 1000;
    }
    return timerfd_settime(timer->fd, 0, &spec, NULL) < 0 ? -errno : 0;
}

void loop_timer_disarm(loop_timer *timer)
{
    struct itimerspec spec = {0};
    timerfd_settime(timer->fd, 0, &spec, NULL);
}

uint64_t loop_timer_now_usec(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * UINT64_C(1000000) + (uint64_t)ts.tv_nsec / 1000u;
}

int64_t loop_timer_now_ms(void)
{
    return (int64_t)(loop_timer_now_usec() / 1000u);
}
