/* delivery_ews — the delivery interface (daemon/delivery.h) spoken as Exchange Web
 * Services SOAP for on-premises Exchange: appointments in the calendar, tasks in
 * the Tasks folder, each found again by its naming property. */
#ifndef FOLLOWUPD_DELIVERY_EWS_H
#define FOLLOWUPD_DELIVERY_EWS_H

#include <systemd/sd-event.h>

#include "daemon/delivery.h"

void *delivery_ews_new(sd_event *event);
extern const delivery_ops delivery_ews_ops;

#endif
