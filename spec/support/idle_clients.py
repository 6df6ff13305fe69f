# Holds N keep-alive connections to 127.0.0.1:PORT open and idle, each after one request:
#   python3 spec/support/idle_clients.py PORT N STATUSFILE
# writes "READY <ok>" to STATUSFILE once every connection has its response, then waits for
# STATUSFILE to be removed (or 60 s) and closes them all.
import os, socket, sys, time
port, n, status = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
socks = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    socks.append(s)
ok = 0
for s in socks:
    s.settimeout(20)
    data = b""
    while b"\r\n\r\n" not in data or not data.endswith(b"ok"):
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    if data.startswith(b"HTTP/1.1 200"):
        ok += 1
with open(status + ".tmp", "w") as f:
    f.write("READY %d\n" % ok)
os.rename(status + ".tmp", status)
deadline = time.time() + 60
while os.path.exists(status) and time.time() < deadline:
    time.sleep(0.05)
for s in socks:
    s.close()
