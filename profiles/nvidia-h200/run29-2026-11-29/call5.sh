# session 25 call 5: the first call at B8 T4096 H32 on a cold cache (the three kept cross configs); is a profiler
# (Nsight Compute / Systems) on the machine
. <scratch>/common.sh
TRITON_CACHE_DIR=$(mktemp -d) timeout 120 python3 -u scripts/gpu_wkv6.py --first-call 2>&1 | tail -2
for t in ncu nsys nvdisasm cuobjdump; do printf "%s: " $t; (command -v $t || ls /usr/local/cuda*/bin/$t /opt/nvidia/*/$t 2>/dev/null | head -1 || echo none) | head -1; done
ls -d /usr/local/cuda* /opt/nvidia* 2>/dev/null | head; python3 -c "import torch; print(torch.version.cuda)"
echo "done after $(el)"
