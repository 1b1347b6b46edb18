/* A socket holder as simple C servers are written: blocking accept(2) on
 * the listening socket it got as fd 3, one line per connection. It does
 * not expect EAGAIN from a blocking accept: it reports it and exits, as
 * such programs do. Used by porter's O_NONBLOCK tests. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(void) {
	printf("ready\n");
	fflush(stdout);
	for (;;) {
		int c = accept(3, NULL, NULL);
		if (c < 0) {
			printf("accept: %s\n", strerror(errno));
			fflush(stdout);
			return 1;
		}
		if (write(c, "C\n", 2) != 2) {
			/* the client went away; keep serving */
		}
		close(c);
	}
}
