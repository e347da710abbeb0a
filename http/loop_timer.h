/* loop_timer — a one-shot timer on the sd_event loop, built on its own timerfd
 * watched as an io source. (sd_event's time sources stopped being armed for us
 * under load with libsystemd 252; an fd we own is simple and observable.) */
#ifndef FOLLOWUPD_LOOP_TIMER_H
#define FOLLOWUPD_LOOP_TIMER_H

#include <stdint.h>
#include <systemd/sd-event.h>

typedef struct loop_timer loop_timer;
typedef void (*loop_timer_fn)(void *userdata);

loop_timer *loop_timer_new(sd_event *event, loop_timer_fn fn, void *userdata)
    __attribute__((warn_unused_result));
void loop_timer_free(loop_timer *timer);

/* (Re)arms the timer to fire once after delay_usec (0: on the next loop turn). */
int loop_timer_arm(loop_timer *timer, uint64_t delay_usec);
void loop_timer_disarm(loop_timer *timer);

/* CLOCK_MONOTONIC, the clock these timers run on, for deadlines and leases. */
uint64_t loop_timer_now_usec(void);
int64_t loop_timer_now_ms(void);

#endif
