#!/bin/perl
# Tier 3's traffic tool for the domUs (tvd_testing/xentier.py puts it into the "tools" domU
# initramfs as /bin/tvd-traffic, next to Debian's perl binary and its shared libraries).
# No modules: the guest has no Perl library tree, so socket constants are written out
# (Linux x86-64) and sockaddr_in is packed by hand.
#
#   tvd-traffic tcp-recv PORT OUTFILE        one connection, everything it sends into OUTFILE
#   tvd-traffic tcp-send IP PORT FILE WAIT   connect (retrying for WAIT s), send FILE, half-close,
#                                            wait for the receiver to close
#   tvd-traffic udp-recv PORT [LINGER]       check and acknowledge datagrams until END, answer
#                                            repeated ENDs for LINGER s (default 5), report
#   tvd-traffic udp-send IP PORT COUNT       COUNT datagrams of the sizes in @SIZES, each resent
#                                            until acknowledged (stop and wait)
#
# A datagram is "TVDU" seq len sum (3 x 32-bit, network order) and `len` bytes of content
# derived from seq (a 64 KiB pseudo-random block both sides compute, read at an offset given
# by seq); `sum` is a 32-bit checksum of the content (sum of its bytes, perl's %32C). The
# receiver checks the length, the checksum and every byte against what the sender must have
# sent, and acknowledges only an intact datagram. Results are printed as `@@csum ...` lines.
# (strict and warnings are modules too: tier 1 checks the file with perl -Mstrict -Mwarnings)

my ($AF_INET, $SOCK_STREAM, $SOCK_DGRAM, $SOL_SOCKET, $SO_REUSEADDR, $SO_RCVBUF) = (2, 1, 2, 1, 2, 8);
# UDP payload sizes, cycled: small, exactly one 1500-byte frame (1472), one byte more (IP
# fragments from there on), up to the largest datagram IPv4 carries (65507 bytes of UDP data)
my @SIZES = (1, 100, 512, 1000, 1456, 1457, 2000, 2960, 4000, 8972, 16000, 32000, 65491);

sub uptime { open(my $f, '<', '/proc/uptime') or return time; my $l = <$f>; close $f; return (split ' ', $l)[0] }

sub addr {
    my ($ip, $port) = @_;
    return pack('S n C4 x8', $AF_INET, $port, split(/\./, $ip || '0.0.0.0'));
}

sub peer_of {
    my ($sa) = @_;
    my ($fam, $port, @ip) = unpack('S n C4', $sa);
    return (join('.', @ip), $port);
}

my $BIG;
sub big {
    return $BIG if defined $BIG;
    my ($x, @w) = (0x2545F491);
    for (1 .. 16384) { $x = ($x * 1103515245 + 12345) % 4294967296; push @w, $x ^ ($x >> 13) }
    $BIG = pack('N*', @w);
    return $BIG;
}

sub content {
    my ($seq, $len) = @_;
    my $b = big();
    return substr($b . $b, ($seq * 7919) % length($b), $len);
}

sub sock {
    my ($type) = @_;
    socket(my $s, $AF_INET, $type, 0) or die "socket: $!";
    setsockopt($s, $SOL_SOCKET, $SO_REUSEADDR, pack('i', 1));
    return $s;
}

sub tcp_recv {
    my ($port, $out) = @_;
    my $l = sock($SOCK_STREAM);
    bind($l, addr(undef, $port)) or die "bind: $!";
    listen($l, 1) or die "listen: $!";
    print "\@\@csum tcp-listening port=$port\n";
    my $from = accept(my $c, $l) or die "accept: $!";
    my $t0 = uptime();
    open(my $f, '>', $out) or die "$out: $!";
    binmode $f;
    my ($n, $buf) = (0, '');
    while (1) {
        my $r = sysread($c, $buf, 65536);
        die "read: $!" unless defined $r;
        last if $r == 0;
        print $f $buf;
        $n += $r;
    }
    close $f;
    my $dt = uptime() - $t0;
    close $c;
    my ($ip) = peer_of($from);
    printf "\@\@csum tcp-rx bytes=%d seconds=%.2f from=%s\n", $n, $dt, $ip;
}

sub tcp_send {
    my ($ip, $port, $file, $wait) = @_;
    open(my $f, '<', $file) or die "$file: $!";
    binmode $f;
    local $/;
    my $data = <$f>;
    close $f;
    my $t0 = uptime();
    my ($c, $tries);
    while (1) {
        $tries++;
        $c = sock($SOCK_STREAM);
        last if connect($c, addr($ip, $port));
        close $c;
        die "connect to $ip:$port: $! (for ${wait}s, $tries tries)" if uptime() - $t0 > $wait;
        sleep 1;
    }
    my $t1 = uptime();
    my ($off, $len) = (0, length $data);
    while ($off < $len) {
        my $w = syswrite($c, $data, 65536, $off);
        die "write: $!" unless defined $w;
        $off += $w;
    }
    shutdown($c, 1);
    my $buf;
    1 while sysread($c, $buf, 4096);       # the receiver closes once it has read everything
    my $dt = uptime() - $t1;
    close $c;
    printf "\@\@csum tcp-tx bytes=%d seconds=%.2f connect_tries=%d connect_wait=%.1f\n", $off, $dt, $tries, $t1 - $t0;
}

sub udp_recv {
    my ($port, $linger) = @_;
    $linger //= 5;
    my $s = sock($SOCK_DGRAM);
    setsockopt($s, $SOL_SOCKET, $SO_RCVBUF, pack('i', 4 << 20));
    bind($s, addr(undef, $port)) or die "bind: $!";
    print "\@\@csum udp-listening port=$port\n";
    my (%seen, @badinfo, $t0, $end_at);
    my ($bad, $dup, $bytes) = (0, 0, 0);
    while (1) {
        if (defined $end_at) {   # after END: answer repeated ENDs for a while, then report
            my $rin = '';
            vec($rin, fileno($s), 1) = 1;
            last if uptime() - $end_at > $linger;
            next unless select(my $rout = $rin, undef, undef, 1);
        }
        my $buf;
        my $from = recv($s, $buf, 70000, 0);
        die "recv: $!" unless defined $from;
        $t0 //= uptime();
        if (substr($buf, 0, 4) eq 'TEND') {
            send($s, 'TEAK' . substr($buf, 4, 4), 0, $from);
            $end_at //= uptime();
            next;
        }
        my ($magic, $seq, $len, $sum) = unpack('a4 N N N', $buf);
        my $got = substr($buf, 16);
        my $why = '';
        if (!defined $sum || $magic ne 'TVDU') { $why = 'header' }
        elsif (length($got) != $len) { $why = 'length ' . length($got) . "!=$len" }
        elsif (unpack('%32C*', $got) != $sum) { $why = 'checksum' }
        elsif ($got ne content($seq, $len)) { $why = 'content' }
        if ($why) {
            $bad++;
            push @badinfo, "$seq:$why" if @badinfo < 10;
            next;                               # not acknowledged: the sender resends it
        }
        if ($seen{$seq}++) { $dup++ } else { $bytes += $len }
        send($s, 'TACK' . pack('N', $seq), 0, $from);
    }
    printf "\@\@csum udp-rx unique=%d dup=%d bad=%d bytes=%d seconds=%.2f bad_examples=%s\n",
        scalar(keys %seen), $dup, $bad, $bytes, ($end_at // uptime()) - ($t0 // uptime()), join(',', @badinfo) || '-';
}

sub await_ack {
    my ($s, $want, $timeout) = @_;
    my $deadline = uptime() + $timeout;
    while ((my $left = $deadline - uptime()) > 0) {
        my $rin = '';
        vec($rin, fileno($s), 1) = 1;
        next unless select(my $rout = $rin, undef, undef, $left);
        my $buf;
        recv($s, $buf, 64, 0);
        return 1 if $buf eq $want;             # anything else: a late ack of an earlier resend
    }
    return 0;
}

sub udp_send {
    my ($ip, $port, $count) = @_;
    my $s = sock($SOCK_DGRAM);
    my $to = addr($ip, $port);
    my ($acked, $resent, $bytes, $lost, $t0) = (0, 0, 0, 0, uptime());
    for my $seq (1 .. $count) {
        my $len = $SIZES[($seq - 1) % @SIZES];
        my $p = content($seq, $len);
        my $d = pack('a4 N N N', 'TVDU', $seq, $len, unpack('%32C*', $p)) . $p;
        my $ok = 0;
        for my $try (1 .. 10) {
            $resent++ if $try > 1;
            send($s, $d, 0, $to) or die "send: $!";
            if (await_ack($s, 'TACK' . pack('N', $seq), 2)) { $ok = 1; last }
        }
        if ($ok) { $acked++; $bytes += $len } else { $lost++ }
    }
    my $dt = uptime() - $t0;
    my $end = 0;
    for (1 .. 10) {
        send($s, 'TEND' . pack('N', $count), 0, $to);
        if (await_ack($s, 'TEAK' . pack('N', $count), 2)) { $end = 1; last }
    }
    printf "\@\@csum udp-tx sent=%d acked=%d unacked=%d resent=%d bytes=%d seconds=%.2f end_acked=%d\n",
        $count, $acked, $lost, $resent, $bytes, $dt, $end;
}

my $cmd = shift @ARGV // '';
$| = 1;
if ($cmd eq 'tcp-recv') { tcp_recv(@ARGV) }
elsif ($cmd eq 'tcp-send') { tcp_send(@ARGV) }
elsif ($cmd eq 'udp-recv') { udp_recv(@ARGV) }
elsif ($cmd eq 'udp-send') { udp_send(@ARGV) }
else { die "usage: tvd-traffic tcp-recv|tcp-send|udp-recv|udp-send ...\n" }
