for i in 1 2; do
 for v in old new; do
  d=/tmp/old; [ $v = new ] && d=/work/main
  echo "== $v run $i"; cd $d && OMP_NUM_THREADS=1 /work/main/.venv/bin/python /tmp/b/ab3.py 1 sdrop_dense,sdrop_compact 4 3 $d 2>&1 | grep -v Warn | grep -v custom_
 done
done
