/* delivery — picks the back end named by [exchange] api: the one place the daemon
 * names a back end (the include rule in scripts/check-includes allows it here only). */
#include "daemon/delivery.h"

#include "ews/delivery_ews.h"
#include "graph/delivery_graph.h"

#include <stdio.h>
#include <stdlib.h>

delivery *delivery_new(sd_event *event, const config *cfg, char *err, size_t errlen)
{
    bool graph = cfg->api == CONFIG_API_GRAPH;
    delivery *d = calloc(1, sizeof *d);
    if (!d || !(d->impl = graph ? delivery_graph_new(event) : delivery_ews_new(event))) {
        free(d);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    d->ops = graph ? &delivery_graph_ops : &delivery_ews_ops;
    if (delivery_configure(d, cfg, err, errlen) < 0) {
        delivery_free(d);
        return NULL;
    }
    return d;
}

void delivery_free(delivery *d)
{
    if (!d)
        return;
    d->ops->free(d->impl);
    free(d);
}
