/* delivery_graph — the delivery interface (daemon/delivery.h) spoken as Microsoft
 * Graph for Exchange Online: appointments are events, tasks are Microsoft To Do
 * tasks in the user's default list. See docs/graph.md. */
#ifndef FOLLOWUPD_DELIVERY_GRAPH_H
#define FOLLOWUPD_DELIVERY_GRAPH_H

#include <systemd/sd-event.h>

#include "daemon/delivery.h"

/* The item id recorded for a task is "<list id>/<task id>", both percent-encoded
 * (so neither contains '/'); an event's is its Graph id as Graph sent it. */

void *delivery_graph_new(sd_event *event);
extern const delivery_ops delivery_graph_ops;

#endif
