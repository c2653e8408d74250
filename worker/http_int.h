/* http: the limits of the HTTP endpoint (http.c), for its tests. The
 * server and the policy at the cap are described at the top of http.c. */
#ifndef ER_WORKER_HTTP_INT_H
#define ER_WORKER_HTTP_INT_H

/* Connections open at once; at the cap a new one displaces an old one. */
#define ER_HTTP_CONN_MAX          32
/* From accept to a complete request head; then the connection is answered
 * with what arrived (400 when incomplete) or closed when nothing did. */
#define ER_HTTP_HEAD_DEADLINE_MS  2000
/* To send the whole response; a client that reads slower is dropped. */
#define ER_HTTP_WRITE_DEADLINE_MS 5000

#endif
